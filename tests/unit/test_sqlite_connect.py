"""The one SQLite connection recipe (``server.sqlite.connect``), and the settings each
daemon's connections get from it, read back from SQLite (pinned as they were before
the recipe was shared: the busy timeouts, journal and sync modes of every file)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from server.sqlite.connect import connect
from server.storage.checkpoint import Checkpointer
from server.storage.connection import open_reader, open_writer
from spoold.spool import DeadLetterStore, Spool
from spoold.state.runs_index import WAL_SIZE_LIMIT_BYTES, RunsIndex


def _pragma(conn: sqlite3.Connection, name: str) -> str | int:
    value: str | int = conn.execute(f"PRAGMA {name}").fetchone()[0]
    return value


def _settings(conn: sqlite3.Connection) -> tuple[str | int, ...]:
    return tuple(_pragma(conn, name) for name in ("busy_timeout", "journal_mode", "synchronous"))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_recipe_applies_what_it_is_given(tmp_path: Path) -> None:
    """Busy timeout (exact ms), journal mode, synchronous and extra pragmas, read back."""
    conn = connect(
        tmp_path / "sub" / "a.sqlite",
        busy_timeout_ms=4097,
        journal_mode="WAL",
        synchronous="FULL",
        pragmas=("foreign_keys = ON", "journal_size_limit = 65536"),
        make_parent=True,
    )
    try:
        assert _settings(conn) == (4097, "wal", 2)
        assert _pragma(conn, "foreign_keys") == 1
        assert _pragma(conn, "journal_size_limit") == 65536
        assert conn.isolation_level is None  # autocommit: the caller issues BEGIN
    finally:
        conn.close()


def test_implicit_transactions_are_sqlite3s_default(tmp_path: Path) -> None:
    """``implicit_transactions``: a DML statement opens a transaction that commit() ends."""
    conn = connect(tmp_path / "a.sqlite", busy_timeout_ms=0, implicit_transactions=True)
    try:
        assert conn.isolation_level == ""
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.in_transaction
        conn.commit()
        assert not conn.in_transaction
    finally:
        conn.close()


def test_a_read_only_connection_cannot_create_or_write(tmp_path: Path) -> None:
    """``read_only`` opens with mode=ro: an absent file is not created, writes fail."""
    path = tmp_path / "a.sqlite"
    with pytest.raises(sqlite3.OperationalError):
        connect(path, busy_timeout_ms=0, read_only=True)
    assert not path.exists()
    connect(path, busy_timeout_ms=0).close()
    conn = connect(path, busy_timeout_ms=0, read_only=True)
    try:
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("CREATE TABLE t (x)")
    finally:
        conn.close()


def test_a_connection_that_fails_to_configure_is_closed(tmp_path: Path) -> None:
    """A file SQLite refuses (garbage bytes) leaves no connection, no descriptor, open."""
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"not a database" * 1000)
    before = _open_fds()
    for _ in range(20):
        with pytest.raises(sqlite3.DatabaseError):
            connect(path, busy_timeout_ms=0, journal_mode="WAL")
    assert _open_fds() == before


def test_the_server_writer_and_readers_take_the_configured_timeout(tmp_path: Path) -> None:
    """The server's connections: busy timeout from its config, WAL, foreign keys, query_only."""
    path = tmp_path / "db.sqlite"
    writer = open_writer(path, journal_mode="WAL", synchronous="NORMAL", busy_timeout_ms=1234)
    reader = open_reader(path, busy_timeout_ms=1234)
    try:
        assert _settings(writer) == (1234, "wal", 1)
        assert _pragma(writer, "foreign_keys") == 1
        assert _pragma(reader, "busy_timeout") == 1234
        assert _pragma(reader, "query_only") == 1
    finally:
        reader.close()
        writer.close()


def test_the_server_writer_refuses_a_journal_mode_sqlite_did_not_set() -> None:
    """The writer reads the journal mode back: one SQLite would not set is an error."""
    with pytest.raises(RuntimeError, match=r"refused journal_mode=WAL \(got memory\)"):
        open_writer(Path(":memory:"), journal_mode="WAL", synchronous="NORMAL", busy_timeout_ms=0)


def test_the_server_checkpointer_takes_the_configured_timeout(tmp_path: Path) -> None:
    """The checkpoint connection: the config's busy timeout and synchronous."""
    path = tmp_path / "db.sqlite"
    open_writer(path, journal_mode="WAL", synchronous="FULL", busy_timeout_ms=0).close()
    checkpointer = Checkpointer(path, synchronous="FULL", busy_timeout_ms=321, interval_s=60)
    conn = checkpointer._open()
    try:
        assert _settings(conn) == (321, "wal", 2)
    finally:
        conn.close()


def test_spoold_runs_index_connection_is_as_before(tmp_path: Path) -> None:
    """The runs index: 5 s busy timeout, WAL, its synchronous, a WAL size limit; the
    operator's read-only look configures nothing."""
    index = RunsIndex(tmp_path / "index.sqlite", synchronous="FULL")
    look = RunsIndex(tmp_path / "index.sqlite", readonly=True)
    try:
        assert _settings(index._conn) == (5000, "wal", 2)
        assert _pragma(index._conn, "journal_size_limit") == WAL_SIZE_LIMIT_BYTES
        assert _pragma(look._conn, "busy_timeout") == 5000
        assert _pragma(look._conn, "journal_size_limit") == -1
    finally:
        look.close()
        index.close()


def test_spoold_dead_letters_connection_is_as_before(tmp_path: Path) -> None:
    """The dead-letter store: 10 s busy timeout, WAL, synchronous=FULL, autocommit."""
    with DeadLetterStore(tmp_path / "sub" / "dl.sqlite") as store:
        assert _settings(store._conn) == (10_000, "wal", 2)
        assert store._conn.isolation_level is None


def test_spoold_spool_connections_are_as_before(tmp_path: Path) -> None:
    """persist-queue's connections and the side ones: 10 s, WAL, synchronous=FULL, and
    sqlite3's implicit transactions (what persist-queue commits with)."""
    spool = Spool(tmp_path / "spool")
    try:
        conns = [*spool._queue.connections, spool._side]
        assert len(conns) == 3
        for conn in conns:
            assert _settings(conn) == (10_000, "wal", 2)
            assert conn.isolation_level == ""
        assert spool.synchronous_modes() == [2, 2, 2, 2]
    finally:
        spool.close()
