"""Dead letters: operations the server permanently refused, kept on disk for an operator.

The drainer moves a refused operation here instead of retrying it forever, so
one poison item never blocks the items behind it. The store is its own small
SQLite database (WAL, ``synchronous=FULL``: every add is fsync'd before it
returns) because it must be usable by the operator CLI while the daemon is
stopped *and* while it runs: two processes share it through SQLite's locking,
waiting up to ``busy_timeout_ms`` for each other. The same operation failing
again updates its record (``last_failed_at``, ``attempts``) instead of
duplicating it. Replay is two steps so nothing is lost in between: the caller
re-enqueues what ``take_for_replay`` returns, then ``remove``s those ids.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from server.sqlite.connect import connect
from spoold.config import SPOOL_BUSY_TIMEOUT_MS
from spoold.spool.errors import SpoolFormatError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    op_key TEXT NOT NULL UNIQUE,
    op TEXT NOT NULL,
    error TEXT NOT NULL,
    status INTEGER,
    first_failed_at REAL NOT NULL,
    last_failed_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1
)
"""
_COLUMNS = "id, op, error, status, first_failed_at, last_failed_at, attempts"
_UPSERT = """
INSERT INTO dead_letters (op_key, op, error, status, first_failed_at, last_failed_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (op_key) DO UPDATE SET
    error = excluded.error, status = excluded.status,
    last_failed_at = excluded.last_failed_at, attempts = attempts + 1
RETURNING id
"""
_CHUNK = 500  # ids per IN (...) clause, well under SQLite's variable limit


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused operation and why; times are Unix wall-clock seconds."""

    id: int
    op: dict[str, Any]
    error: str
    status: int | None
    first_failed_at: float
    last_failed_at: float
    attempts: int


Records = list[DeadLetter]  # a module-level alias: the store's ``list`` method shadows the builtin


def _row(row: tuple[Any, ...]) -> DeadLetter:
    op = orjson.loads(row[1])
    return DeadLetter(row[0], op, row[2], row[3], row[4], row[5], row[6])


def _op_key(op: Mapping[str, Any]) -> tuple[str, str]:
    text = orjson.dumps(op, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest(), text.decode()


class DeadLetterStore:
    """A durable, append-mostly table of refused operations at ``path``."""

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_ms: int = SPOOL_BUSY_TIMEOUT_MS
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = connect(
            self.path,
            busy_timeout_ms=busy_timeout_ms,
            journal_mode="WAL",
            synchronous="FULL",
            make_parent=True,
        )
        try:
            with self._write() as conn:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version > SCHEMA_VERSION:
                    raise SpoolFormatError(
                        f"dead-letter store {self.path} has schema {version}; this spoold "
                        f"reads up to {SCHEMA_VERSION}"
                    )
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._conn.close()
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: takes the write lock up front, waits busy_timeout."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def add(self, op: Mapping[str, Any], reason: str, status: int | None) -> int:
        """Record a refused operation durably; returns its id."""
        return self.add_many([(op, reason, status)])[0]

    def add_many(self, entries: Iterable[tuple[Mapping[str, Any], str, int | None]]) -> list[int]:
        """Record several refused operations in one transaction (one fsync)."""
        now = time.time()
        rows = [(*_op_key(op), reason, status, now, now) for op, reason, status in entries]
        with self._write() as conn:
            return [int(conn.execute(_UPSERT, row).fetchone()[0]) for row in rows]

    def list(self, limit: int = 100, offset: int = 0) -> Records:
        """Records oldest first, one page at a time."""
        sql = f"SELECT {_COLUMNS} FROM dead_letters ORDER BY id LIMIT ? OFFSET ?"
        return [_row(r) for r in self._read(sql, (limit, offset))]

    def get(self, id: int) -> DeadLetter | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (id,))
        return _row(rows[0]) if rows else None

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM dead_letters")[0][0])

    def remove(self, ids: Iterable[int]) -> int:
        """Delete the given records; returns how many existed."""
        wanted, removed = sorted(set(ids)), 0
        with self._write() as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                removed += conn.execute(
                    f"DELETE FROM dead_letters WHERE id IN ({marks})", chunk
                ).rowcount
        return removed

    def purge(self) -> int:
        """Delete every record; returns how many there were."""
        with self._write() as conn:
            return int(conn.execute("DELETE FROM dead_letters").rowcount)

    def take_for_replay(
        self, ids: Iterable[int] | None = None, *, after_id: int = 0, limit: int = 1000
    ) -> Records:
        """Records to re-enqueue, oldest first; nothing is removed (re-enqueue, then ``remove``).

        With ``ids``: every one of those records that exists, however many (no cap: pass
        a page of ids). Without: the next ``limit`` records with an id above ``after_id``,
        so a caller walks every page, including past records it chose to keep.
        """
        if ids is None:
            sql = f"SELECT {_COLUMNS} FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?"
            return [_row(r) for r in self._read(sql, (after_id, limit))]
        wanted = sorted(set(ids))
        found: Records = []
        for start in range(0, len(wanted), _CHUNK):
            chunk = tuple(wanted[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {_COLUMNS} FROM dead_letters WHERE id IN ({marks}) ORDER BY id"
            found.extend(_row(r) for r in self._read(sql, chunk))
        return found

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> DeadLetterStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
