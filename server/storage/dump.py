"""Every stored row of a server's SQLite file, read from one consistent snapshot, for a
copy into another database (``telemetry-server migrate``, ``server.postgres.import_sqlite``).

A ``Dump`` owns one read-only connection and one read transaction for its whole life, as
``export`` does: safe beside a running server (its writer keeps committing; the dump
sees the database as of the moment it began, and nothing written later). Runs are read
in ``id`` order (the rowid: new runs get ids above every stored one), so a copy can stop
and go on after the last id it holds. (SQLite gives the largest id again when the run
holding it was deleted first; a copy that had it then misses the new run, and its
verification says so.) The file must be at this server's schema version: the
dump never writes, so it cannot upgrade an older file.

The long read transaction pins the WAL (see ``export``): the file's WAL grows while a
dump is open and is started over by the first checkpoint after it closes. In a rollback
journal mode (the server's ``TELEMETRY_DB_JOURNAL_MODE`` other than WAL) it does worse: it
holds the read lock a commit must wait for, so dump such a file with its server stopped.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from server.contract.run_record import RUN_COLUMNS
from server.storage.connection import open_reader
from server.storage.schema import SCHEMA_VERSION, current_version

#: The stored columns of ``agent_runs`` that are data (every one but the generated
#: ``run_json``), in the order a dump gives them: the rowid first.
ROW_COLUMNS: tuple[str, ...] = (
    "id",
    *RUN_COLUMNS,
    "sidecar_id",
    "reaped_at",
    "snapshot_source",
    "snapshot_seq",
)
SIDECAR_COLUMNS: tuple[str, ...] = ("sidecar_id", "last_contact_at", "queued_since")
_SELECT = f"SELECT {', '.join(ROW_COLUMNS)} FROM agent_runs"


class DumpError(RuntimeError):
    """The file is not a server database this version can read (missing, foreign,
    another schema version); the message is one line for the operator."""


class Dump:
    """Open with ``Dump.open``; always ``close()`` (on the thread that read last)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        #: Stable per database (derived from its cursor key, made once at creation):
        #: names the copy's progress in the target, so it resumes only for this file.
        self.identity = ""
        #: The secret that signs the SQLite server's list cursors (server_meta).
        self.cursor_key = b""
        #: ``wal`` unless the server was set otherwise: then a running server's commits
        #: wait for the dump's read lock (and fail after their busy timeout) until it ends.
        self.journal_mode = ""
        self.max_id = 0
        self.runs = 0

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int = 5000) -> Dump:
        """A read-only connection and its snapshot, taken now."""
        if not path.exists():
            raise DumpError(f"no SQLite database at {path}")
        if not path.is_file():
            raise DumpError(f"{path} is not a file")
        try:
            conn = open_reader(path, busy_timeout_ms=busy_timeout_ms)
        except sqlite3.Error as exc:
            raise DumpError(f"cannot open {path}: {exc}") from exc
        dump = cls(conn, path)
        try:
            dump._begin()
        except BaseException:
            dump.close()
            raise
        return dump

    def _begin(self) -> None:
        try:
            self._conn.execute("BEGIN")
            # The first read fixes the snapshot; every later one sees the same database.
            tables = {
                name
                for (name,) in self._conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            version = current_version(self._conn)
        except sqlite3.DatabaseError as exc:
            raise DumpError(f"{self.path} is not a readable SQLite database: {exc}") from exc
        if "agent_runs" not in tables or version == 0:
            raise DumpError(f"{self.path} is not a telemetry server database (no agent_runs)")
        if version > SCHEMA_VERSION:
            raise DumpError(
                f"{self.path} has schema version {version}, newer than this server's"
                f" {SCHEMA_VERSION}: migrate with the telemetry-server that wrote it"
            )
        if version < SCHEMA_VERSION:
            raise DumpError(
                f"{self.path} has schema version {version}, older than this server's"
                f" {SCHEMA_VERSION}: start this telemetry-server on it once (it upgrades"
                " the file), then migrate"
            )
        self.journal_mode = str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        key = self._conn.execute("SELECT value FROM server_meta WHERE key = 'cursor_key'")
        found = key.fetchone()
        self.cursor_key = bytes(found[0]) if found is not None else b""
        self.identity = hashlib.sha256(b"telemetry-sqlite:" + self.cursor_key).hexdigest()[:32]
        self.max_id, self.runs = self._conn.execute(
            "SELECT coalesce(max(id), 0), count(*) FROM agent_runs"
        ).fetchone()

    def runs_after(self, after_id: int, limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` runs with an id above ``after_id``, in id order."""
        return self._conn.execute(
            f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()

    def all_runs(self, batch_rows: int = 5000) -> Iterator[list[tuple[Any, ...]]]:
        """Every run, in id order, a batch at a time."""
        after = 0
        while rows := self.runs_after(after, batch_rows):
            yield rows
            after = int(rows[-1][0])

    def runs_of_agents(
        self, names: Sequence[str], batch_rows: int = 5000
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Every run of these agents (names as stored), in id order per agent."""
        for name in names:
            after = 0
            while rows := self._conn.execute(
                f"{_SELECT} WHERE agent_name = ? AND id > ? ORDER BY id LIMIT ?",
                (name, after, batch_rows),
            ).fetchall():
                yield rows
                after = int(rows[-1][0])

    def sidecars(self) -> list[tuple[Any, ...]]:
        """The sidecars' presence rows (a few per sidecar ever heard from)."""
        return self._conn.execute(
            f"SELECT {', '.join(SIDECAR_COLUMNS)} FROM sidecars ORDER BY sidecar_id"
        ).fetchall()

    def close(self) -> None:
        """End the read transaction and close (idempotent). Call it on the thread that
        read last, never while another thread may be reading."""
        try:
            if self._conn.in_transaction:
                self._conn.rollback()
        except sqlite3.Error:
            pass
        finally:
            self._conn.close()
