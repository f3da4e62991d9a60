"""Export of every run a list query matches, as NDJSON or CSV, chunk by chunk.

One ``Export`` owns one read-only connection and one read transaction for its
whole life: every chunk comes from the same snapshot of the database (runs
written meanwhile are not in it, none is skipped or repeated), and memory stays
one chunk (``CHUNK_ROWS`` runs) whatever the size of the result. Rows are read
by keyset over the list order (``created_at DESC, id DESC``), with the list's
own SQL (``runs.query_sql``), so an export holds exactly the runs that paging
``GET /api/v1/runs`` with the same filters gives.

A long read transaction pins the WAL: a checkpoint cannot copy frames written
after the snapshot began back into the database past the reader's mark, so the
WAL file grows for as long as the export runs (it is started over by the first
checkpoint after the export ends). ``close`` ends the transaction at once, or, when
another thread is reading a chunk, interrupts that read and leaves the closing to it:
closing a SQLite connection under a running statement crashes the process.

NDJSON: one line per run, the bytes ``GET /api/v1/runs`` gives for that run.
CSV (RFC 4180, UTF-8, no BOM, CRLF; see ``csv_lines``): a header of
``server.contract.export.CSV_COLUMNS``; numbers bare, NULL an empty field, text always quoted (quotes
doubled); ``metrics_json``/``context_json`` are their JSON text. Text is written
exactly as stored unless ``escape_formulas`` is asked for.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from server.contract.models import RunQuery
from server.contract.run_record import RUN_COLUMNS
from server.storage import csv_lines, run_json
from server.storage.connection import open_reader
from server.storage.cursor import Position
from server.storage.runs import Overdue, list_rows, row_to_run, stale_query_sql

__all__ = ["CONTENT_TYPES", "FORMATS", "Export", "Format"]

Format = Literal["ndjson", "csv"]
FORMATS: tuple[Format, ...] = ("ndjson", "csv")
CONTENT_TYPES: dict[Format, str] = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
}
#: Runs per chunk: ~2 MB of NDJSON at the fleet's sizes, a few ms of SQLite.
CHUNK_ROWS = 1000
_ALL_COLUMNS = ", ".join(RUN_COLUMNS)
_CREATED_AT = RUN_COLUMNS.index("created_at")


class Export:
    """Open with ``Export.open``; read ``chunks()``; always ``close()``."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        query: RunQuery,
        fmt: Format,
        *,
        escape_formulas: bool = False,
        chunk_rows: int = CHUNK_ROWS,
        overdue: Overdue | None = None,
    ) -> None:
        if query.stale is not None and overdue is None:
            raise ValueError("a stale=true export needs the overdue-runs query")
        self._conn = conn
        self._overdue = overdue
        self._query = query.model_copy(update={"limit": chunk_rows, "offset": 0, "cursor": None})
        self._format = fmt
        self._csv_columns = csv_lines.select_list(escape_formulas=escape_formulas)
        self._after: Position | None = None
        self._done = False
        self._exact_json = run_json.renders_like_orjson()
        self.rows = 0
        #: The header (CSV) is the first chunk.
        self._header_due = fmt == "csv"
        #: Guards the three flags below: a chunk's thread and ``close``'s may differ.
        self._state = threading.Lock()
        self._reading = False
        self._close_asked = False
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        query: RunQuery,
        fmt: Format,
        *,
        busy_timeout_ms: int = 2000,
        escape_formulas: bool = False,
        chunk_rows: int = CHUNK_ROWS,
        overdue: Overdue | None = None,
    ) -> Export:
        """A read-only connection of its own, its snapshot taken now. ``overdue``
        (``stale.overdue_ids_sql``) serves ``stale=true``, required with it."""
        conn = open_reader(path, busy_timeout_ms=busy_timeout_ms)
        try:
            export = cls(
                conn,
                query,
                fmt,
                escape_formulas=escape_formulas,
                chunk_rows=chunk_rows,
                overdue=overdue,
            )
            export.begin()
        except BaseException:
            conn.close()
            raise
        return export

    def begin(self) -> None:
        """Start the read transaction; the first statement fixes the snapshot."""
        self._conn.execute("BEGIN")
        # The first read fixes the snapshot (and meets a lock now, before any answer).
        self._conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()

    def next_chunk(self) -> bytes | None:
        """The next chunk of output, or None once every run was written (or the export
        was closed). Raises ``sqlite3.OperationalError`` when ``close`` interrupted it."""
        with self._state:
            if self._closed or self._close_asked:
                return None
            self._reading = True
        try:
            return self._read_chunk()
        finally:
            with self._state:
                self._reading = False
                close_now = self._close_asked
            if close_now:
                self._release()

    def _read_chunk(self) -> bytes | None:
        if self._header_due:
            self._header_due = False
            return csv_lines.header()
        if self._done:
            return None
        ndjson = self._format == "ndjson"
        if not ndjson:
            columns, created_at = self._csv_columns, csv_lines.CREATED_AT
        elif self._exact_json:
            columns, created_at = run_json.JSON_COLUMNS, run_json.CREATED_AT
        else:
            columns, created_at = _ALL_COLUMNS, _CREATED_AT
        if self._overdue is not None:  # stale=true: the list's own overdue-runs query
            sql, params = stale_query_sql(self._query, self._after, self._overdue, columns)
            rows = self._conn.execute(sql, params).fetchall()
        else:
            rows = list_rows(self._conn, self._query, self._after, columns)
        limit = self._query.limit
        if len(rows) <= limit:
            self._done = True
        rows = rows[:limit]
        if not rows:
            return None
        self._after = Position(str(rows[-1][created_at]), int(rows[-1][-1]))
        self.rows += len(rows)
        if not ndjson:
            return self._csv(rows)
        if columns == run_json.JSON_COLUMNS:
            return self._ndjson_exact(rows)
        return b"".join(run_json.python_rendering(row_to_run(row)) + b"\n" for row in rows)

    def chunks(self) -> Iterator[bytes]:
        while (chunk := self.next_chunk()) is not None:
            yield chunk

    def close(self) -> None:
        """End the transaction and close the connection (idempotent, any thread). A chunk
        being read on another thread is interrupted; that thread closes when it ends."""
        with self._state:
            if self._closed or self._close_asked:
                return
            if self._reading:
                self._close_asked = True
                self._conn.interrupt()  # safe from any thread while the connection is open
                return
            self._closed = True
        self._release()

    def _release(self) -> None:
        with self._state:
            self._closed = True
        try:
            if self._conn.in_transaction:
                self._conn.rollback()
        except sqlite3.Error:
            pass
        finally:
            self._conn.close()

    # ---- rendering ------------------------------------------------------------------

    def _ndjson_exact(self, rows: Sequence[Sequence[Any]]) -> bytes:
        parts: list[bytes] = []
        for body, repo, commit, _, row_id in rows:
            if body is not None:
                parts += (body[:-1], run_json.url_suffix(repo, commit), b"\n")
            else:
                row = self._conn.execute(
                    f"SELECT {_ALL_COLUMNS} FROM agent_runs WHERE id = ?", (row_id,)
                ).fetchone()
                parts += (run_json.python_rendering(row_to_run(row)), b"\n")
        return b"".join(parts)

    def _csv(self, rows: Sequence[Sequence[Any]]) -> bytes:
        end = csv_lines.line_end
        return "".join([line + end(repo, commit) for line, _, repo, commit, _ in rows]).encode()
