"""Opening SQLite connections with the configured journal and sync modes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

JOURNAL_MODES = ("WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY")
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class StorageUnavailable(RuntimeError):
    """The database cannot be used right now (locked, full, I/O error)."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def open_writer(
    path: Path, *, journal_mode: str, synchronous: str, busy_timeout_ms: int
) -> sqlite3.Connection:
    """The single read-write connection, in autocommit mode (we issue BEGIN ourselves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms):d}")
    mode = conn.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()[0]
    if str(mode).upper() != journal_mode:
        conn.close()
        raise RuntimeError(f"SQLite refused journal_mode={journal_mode} (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_reader(path: Path, *, busy_timeout_ms: int) -> sqlite3.Connection:
    """A read-only connection; it can never take the write lock."""
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_timeout_ms / 1000,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms):d}")
    conn.execute("PRAGMA query_only = ON")
    return conn


def pragma_value(conn: sqlite3.Connection, name: str) -> str:
    """A PRAGMA's current value as the guide's /health reports it (upper case names)."""
    value = conn.execute(f"PRAGMA {name}").fetchone()[0]
    if name == "synchronous":
        return SYNCHRONOUS_MODES[int(value)] if 0 <= int(value) < 4 else str(value)
    return str(value).upper()


def classify(exc: sqlite3.Error) -> StorageUnavailable:
    """Translate an sqlite3 error into a client-safe StorageUnavailable (no SQL text)."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StorageUnavailable("database is busy; retry shortly", retry_after_s=1)
    if "full" in text:
        return StorageUnavailable("database storage is full", retry_after_s=30)
    return StorageUnavailable("database unavailable", retry_after_s=5)
