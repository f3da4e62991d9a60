"""Recognising a damaged SQLite file when it is opened, and setting it aside.

Damage shows either as an error SQLite raises (classified by its primary result
code, ``errors.is_corruption``) or as rows an integrity check returns instead of
"ok" (turned into the same kind of error). Either way the file is renamed with
its -wal/-shm to ``<name>.corrupt-<UTC stamp>`` (``layout.quarantine``), kept for
inspection, and a fresh file is opened in its place. What the old file held and
how it is made good is the caller's business (its own log line, its counter).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from server.sqlite.connect import connect
from server.sqlite.errors import is_corruption
from spoold.config import SPOOL_BUSY_TIMEOUT_MS
from spoold.spool import layout
from spoold.spool.errors import corruption_found

T = TypeVar("T")
#: Findings an integrity check reports at most (it stops there: a wrecked file is quick).
MAX_FINDINGS = 8
#: The one shape of sqlite_sequence SQLite accepts; any other makes every AUTOINCREMENT
#: insert fail with SQLITE_CORRUPT_SEQUENCE, which integrity_check does not report.
_SEQUENCE_SQL = "CREATE TABLE sqlite_sequence(name,seq)"


@dataclass(frozen=True)
class SetAside:
    """A damaged file renamed out of the way, and why."""

    renamed_to: Path
    error: str
    code: str | None  # SQLite's error name, e.g. SQLITE_NOTADB or SQLITE_CORRUPT_INDEX


def check_file(path: Path, busy_timeout_ms: int = SPOOL_BUSY_TIMEOUT_MS) -> None:
    """Raise a corruption error if SQLite finds ``path`` damaged (nothing if it is absent).

    ``PRAGMA integrity_check`` reads every page and cross-checks tables and their
    indexes: a damaged page found now is set aside at start-up rather than
    failing writes later. Its cost is linear in the file (about 0.2 s for a
    57 MB runs index, page cache warm). The shape of sqlite_sequence is checked
    too: its damage only shows when a row is inserted.
    """
    if not path.exists():
        return
    conn = connect(path, busy_timeout_ms=busy_timeout_ms)
    try:
        rows = conn.execute(f"PRAGMA integrity_check({MAX_FINDINGS})").fetchall()
        sequence = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'sqlite_sequence'"
        ).fetchall()
    finally:
        conn.close()
    findings = [str(row[0]) for row in rows]
    if sequence and sequence != [(_SEQUENCE_SQL,)]:
        findings = [*(f for f in findings if f != "ok"), f"sqlite_sequence is {sequence[0][0]!r}"]
    if findings != ["ok"]:
        raise corruption_found(path, findings)


def open_or_set_aside(path: Path, opener: Callable[[Path], T]) -> tuple[T, SetAside | None]:
    """``opener(path)``; if it fails with corruption, set the file aside and open anew.

    ``opener`` must close what it opened before raising. Errors that are not
    corruption (a locked file, a full disk, permissions) propagate unchanged:
    renaming a healthy file aside would throw its contents away.
    """
    try:
        return opener(path), None
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        aside = SetAside(layout.quarantine(path), str(exc), getattr(exc, "sqlite_errorname", None))
    return opener(path), aside
