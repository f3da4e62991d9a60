"""The dead letters as the status page shows them: read-only, newest first, a page at a time.

The page opens its own read-only connection to the store's file for each view,
in a worker thread, and closes it in that same thread: it never takes the
store's lock (held by the drainer while it fsyncs a refusal), never writes, and
a damaged, missing or locked file is a state shown on the page, not an error.
Only the columns a row shows are read; the operation itself stays in SQLite
(``json_extract`` takes its event id and kind), so a page of large refused
bodies is not loaded into Python.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.sqlite.connect import connect

#: Dead letters per page.
PAGE_SIZE = 25
#: A busy writer (a checkpoint, another process) is waited for this long at most.
BUSY_TIMEOUT_MS = 1000
_MAX_ID = 2**63 - 1  # SQLite's largest rowid
#: Longest reason shown; the rest is cut (the CLI shows it whole).
REASON_MAX_CHARS = 2000

_COLUMNS = """
    id,
    CASE WHEN json_valid(op) THEN json_extract(op, '$.event_id') END,
    CASE WHEN json_valid(op) THEN json_extract(op, '$.kind') END,
    substr(error, 1, ?),
    status, first_failed_at, last_failed_at, attempts
"""


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter's row on the page; times are Unix wall-clock seconds."""

    id: int
    event_id: str | None
    kind: str | None
    reason: str
    status: int | None
    first_failed_at: float | None
    last_failed_at: float | None
    attempts: int | None


@dataclass(frozen=True, slots=True)
class LetterPage:
    """A page of dead letters, or why none could be read (``error``)."""

    total: int | None = None
    letters: list[Letter] = field(default_factory=list)
    #: Ids to page on: older letters exist below ``older_than``, newer above ``newer_than``.
    older_than: int | None = None
    newer_than: int | None = None
    error: str | None = None


def read_page(
    path: Path, *, before: int | None = None, after: int | None = None, limit: int = PAGE_SIZE
) -> LetterPage:
    """Newest first: the ``limit`` letters below ``before``, or just above ``after``, or the
    newest. Blocking: run it in a thread."""
    try:
        conn = connect(
            path, busy_timeout_ms=BUSY_TIMEOUT_MS, read_only=True, pragmas=("query_only = ON",)
        )
    except sqlite3.Error as exc:
        return LetterPage(error=_why(exc))
    try:
        return _read(conn, before=before, after=after, limit=limit)
    except sqlite3.Error as exc:
        return LetterPage(error=_why(exc))
    finally:
        conn.close()


def _read(
    conn: sqlite3.Connection, *, before: int | None, after: int | None, limit: int
) -> LetterPage:
    # One read transaction: the count and the rows agree.
    conn.execute("BEGIN")
    try:
        (total,) = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        if after is not None:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?",
                (REASON_MAX_CHARS, after, limit),
            ).fetchall()
            rows.reverse()
        else:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id < ? ORDER BY id DESC LIMIT ?",
                (REASON_MAX_CHARS, before if before is not None else _MAX_ID, limit),
            ).fetchall()
        letters = [_letter(row) for row in rows]
        older = newer = None
        if letters:
            low, high = letters[-1].id, letters[0].id
            if _exists(conn, "id < ?", low):
                older = low
            if _exists(conn, "id > ?", high):
                newer = high
        elif after is not None and _exists(conn, "id <= ?", after):
            older = min(after + 1, _MAX_ID)  # past the newest: offer the way back
    finally:
        conn.execute("COMMIT")
    return LetterPage(total=int(total), letters=letters, older_than=older, newer_than=newer)


def _exists(conn: sqlite3.Connection, where: str, value: int) -> bool:
    sql = f"SELECT EXISTS (SELECT 1 FROM dead_letters WHERE {where})"
    return bool(conn.execute(sql, (value,)).fetchone()[0])


def _letter(row: tuple[Any, ...]) -> Letter:
    """A row as the page shows it; a damaged value (wrong type) shows as unknown."""
    event_id, kind, reason, status = row[1], row[2], row[3], row[4]
    return Letter(
        id=int(row[0]),  # the rowid: always an integer
        event_id=event_id if isinstance(event_id, str) else None,
        kind=kind if isinstance(kind, str) else None,
        reason=reason if isinstance(reason, str) else "",
        status=status if isinstance(status, int) else None,
        first_failed_at=_number(row[5]),
        last_failed_at=_number(row[6]),
        attempts=row[7] if isinstance(row[7], int) else None,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _why(exc: sqlite3.Error) -> str:
    """A short, path-free description of why the store could not be read."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
