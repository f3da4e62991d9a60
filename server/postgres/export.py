"""The export on PostgreSQL: the same bytes as SQLite's (``server.storage.export``), from
one consistent snapshot.

One pooled connection holds a ``REPEATABLE READ READ ONLY`` transaction for the whole
stream (runs written meanwhile are not in it), and walks the list's keyset in chunks
of ``CHUNK_ROWS``; each chunk is rendered in Python: NDJSON lines are the list's own
rendering, CSV lines those ``server.storage.csv_lines`` writes in SQL (quoted text,
bare numbers, empty NULL, the stored JSON text). ``close`` ends the transaction and
gives the connection back, whenever the client leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from server.contract.codec import dumps_text
from server.contract.models import RunQuery
from server.contract.run_record import (
    RUN_COLUMNS,
    RUN_COUNTER_COLUMNS,
    RUN_JSON_COLUMNS,
    RUN_STALENESS_COLUMNS,
)
from server.postgres import runs
from server.postgres.errors import ACQUIRE_TIMEOUT_S, available
from server.storage import csv_lines
from server.storage.cursor import Position
from server.storage.run_json import python_rendering

CHUNK_ROWS = 1000
_INTEGERS = frozenset((*RUN_COUNTER_COLUMNS, *RUN_STALENESS_COLUMNS))
_JSON = frozenset(RUN_JSON_COLUMNS)


class PostgresExport:
    def __init__(
        self,
        pool: Any,
        query: RunQuery,
        fmt: Literal["ndjson", "csv"],
        *,
        escape_formulas: bool,
        stale: runs.StaleRule,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._on_close = on_close
        self._query = query.model_copy(update={"limit": CHUNK_ROWS, "offset": 0})
        self._format = fmt
        self._escape = escape_formulas
        self._stale = stale
        self._conn: Any = None
        self._transaction: Any = None
        self._after: Position | None = None
        self._done = False
        self._header_sent = fmt != "csv"
        self.rows = 0

    async def open(self) -> None:
        """Take a connection and start the snapshot (before the 200 is sent, so a
        database that is down is still a 503)."""
        async with available():
            self._conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
            try:
                self._transaction = self._conn.transaction(
                    isolation="repeatable_read", readonly=True
                )
                await self._transaction.start()
                await self._conn.fetchval("SELECT 1")  # the snapshot is taken here
            except BaseException:
                await self.close()
                raise

    async def next_chunk(self) -> bytes | None:
        if not self._header_sent:
            self._header_sent = True
            return csv_lines.header()
        if self._done:
            return None
        async with available():
            page = await runs.query_runs(self._conn, self._query, self._after, self._stale)
        self._after = page.next_position
        self._done = page.next_position is None
        if not page.runs:
            return None
        self.rows += len(page.runs)
        if self._format == "ndjson":
            return b"".join(python_rendering(run) + b"\n" for run in page.runs)
        return "".join(self._csv_line(run) for run in page.runs).encode()

    async def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:  # once, whether or not a connection was taken
            on_close()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._transaction is not None and not conn.is_closed():
                await self._transaction.rollback()
        except Exception:  # noqa: S110  # a broken connection: the pool discards it
            pass
        finally:
            await self._pool.release(conn)

    def _csv_line(self, run: dict[str, Any]) -> str:
        fields = [self._field(column, run[column]) for column in RUN_COLUMNS]
        return ",".join(fields) + csv_lines.line_end(run["git_repo"], run["git_commit_hash"])

    def _field(self, column: str, value: Any) -> str:
        if value is None:
            return ""
        if column in _INTEGERS and type(value) is int:
            return str(value)
        text = dumps_text(value) if column in _JSON else str(value)
        if self._escape and text.startswith(csv_lines.FORMULA_STARTS):
            text = "'" + text
        return csv_lines.quote_text(text)
