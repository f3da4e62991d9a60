"""The server's SQLite connections (writer, readers) from its configured journal and sync
modes, and its answer to a failed statement (both through ``server.sqlite``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from server.sqlite.connect import connect
from server.sqlite.errors import Kind, kind

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
#: The writer's page cache, KiB. SQLite's default (2 MiB, ~500 pages) is less than one
#: write group dirties at 1M runs (12 indexes, a random leaf each per insert): pages
#: were spilled to the WAL mid-transaction and read back from the OS for the next group.
WRITER_CACHE_KIB = 64 * 1024


#: What a failed SQLite statement raises, named here so the layers above storage (the HTTP
#: handlers, the CLIs) catch it without importing the driver themselves.
SQLiteError = sqlite3.Error


class StorageUnavailable(RuntimeError):
    """The database cannot be used right now (locked, full, I/O error)."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def open_writer(
    path: Path, *, journal_mode: str, synchronous: str, busy_timeout_ms: int
) -> sqlite3.Connection:
    """The single read-write connection, in autocommit mode (we issue BEGIN ourselves)."""
    conn = connect(
        path,
        busy_timeout_ms=busy_timeout_ms,
        journal_mode=journal_mode,
        synchronous=synchronous,
        pragmas=("foreign_keys = ON", f"cache_size = -{WRITER_CACHE_KIB:d}"),
        make_parent=True,
    )
    mode = pragma_value(conn, "journal_mode")
    if mode != journal_mode:
        conn.close()
        raise RuntimeError(f"SQLite refused journal_mode={journal_mode} (got {mode.lower()})")
    return conn


def open_reader(path: Path, *, busy_timeout_ms: int) -> sqlite3.Connection:
    """A read-only connection; it can never take the write lock."""
    return connect(
        path, busy_timeout_ms=busy_timeout_ms, read_only=True, pragmas=("query_only = ON",)
    )


def pragma_value(conn: sqlite3.Connection, name: str) -> str:
    """A PRAGMA's current value as the guide's /health reports it (upper case names)."""
    value = conn.execute(f"PRAGMA {name}").fetchone()[0]
    if name == "synchronous":
        return SYNCHRONOUS_MODES[int(value)] if 0 <= int(value) < 4 else str(value)
    return str(value).upper()


def classify(exc: sqlite3.Error) -> StorageUnavailable:
    """Translate an sqlite3 error into a client-safe StorageUnavailable (no SQL text)."""
    found = kind(exc)
    if found is Kind.BUSY:
        return StorageUnavailable("database is busy; retry shortly", retry_after_s=1)
    if found is Kind.FULL:
        return StorageUnavailable("database storage is full", retry_after_s=30)
    return StorageUnavailable("database unavailable", retry_after_s=5)
