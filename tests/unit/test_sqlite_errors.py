"""The shared SQLite error classifier (``server.sqlite.errors``) on errors SQLite really
raises, provoked on real files: a lock held by a second connection, garbage bytes, a
read-only open, a file size limit, an interrupted statement, a broken constraint."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from server.sqlite.connect import connect
from server.sqlite.errors import (
    Kind,
    coded_error,
    is_busy,
    is_corruption,
    is_disk_full,
    kind,
    primary_code,
)
from server.storage.connection import classify
from spoold.spool.writegate import WriteGate


def _raised(conn: sqlite3.Connection, sql: str) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as info:
        conn.execute(sql).fetchall()
    return info.value


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "t.sqlite"
    conn = connect(path, busy_timeout_ms=1000, journal_mode="WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, full_name TEXT NOT NULL UNIQUE)")
    conn.execute("INSERT INTO t (full_name) VALUES ('a')")
    conn.close()
    return path


def test_a_write_lock_held_by_another_connection_is_busy(db: Path) -> None:
    """SQLITE_BUSY from a second connection's write lock: busy, and the server says 1 s."""
    holder = connect(db, busy_timeout_ms=1000)
    other = connect(db, busy_timeout_ms=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        exc = _raised(other, "BEGIN IMMEDIATE")
        assert primary_code(exc) == sqlite3.SQLITE_BUSY
        assert kind(exc) is Kind.BUSY
        assert is_busy(exc)
        assert not is_corruption(exc)
        assert not is_disk_full(exc)
        assert classify(exc).retry_after_s == 1
        holder.execute("ROLLBACK")
    finally:
        holder.close()
        other.close()


def test_a_table_locked_by_a_pending_read_is_busy(db: Path) -> None:
    """SQLITE_LOCKED (a DROP under the same connection's unfinished read) is busy too."""
    conn = connect(db, busy_timeout_ms=0)
    try:
        conn.executemany("INSERT INTO t (full_name) VALUES (?)", [("b",), ("c",), ("d",)])
        cursor = conn.execute("SELECT * FROM t")
        cursor.fetchone()  # the read is still under way (rows remain)
        exc = _raised(conn, "DROP TABLE t")
        assert primary_code(exc) == sqlite3.SQLITE_LOCKED
        assert kind(exc) is Kind.BUSY
        assert classify(exc).retry_after_s == 1
        cursor.close()
    finally:
        conn.close()


def test_a_file_that_reached_its_page_limit_is_full(db: Path) -> None:
    """SQLITE_FULL on a real file (a page limit): full, and the server says 30 s."""
    conn = connect(db, busy_timeout_ms=0)
    try:
        conn.execute("PRAGMA max_page_count = 16").fetchall()
        rows = [(f"{n}" * 4096,) for n in range(64)]  # 64 rows of 4 KiB exceed 16 pages
        with pytest.raises(sqlite3.Error) as info:
            conn.executemany("INSERT INTO t (full_name) VALUES (?)", rows)
        exc = info.value
        assert primary_code(exc) == sqlite3.SQLITE_FULL
        assert kind(exc) is Kind.FULL
        assert is_disk_full(exc)
        assert classify(exc).retry_after_s == 30
    finally:
        conn.close()


def test_a_file_of_garbage_bytes_is_corrupt(tmp_path: Path) -> None:
    """SQLITE_NOTADB from a file of random bytes: corrupt (never busy, never full)."""
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(sqlite3.DatabaseError) as info:
        connect(path, busy_timeout_ms=0, journal_mode="WAL")
    exc = info.value
    assert primary_code(exc) == sqlite3.SQLITE_NOTADB
    assert kind(exc) is Kind.CORRUPT
    assert is_corruption(exc)
    assert not is_busy(exc)
    assert not is_disk_full(exc)
    assert classify(exc).retry_after_s == 5


def test_a_damaged_page_is_corrupt(tmp_path: Path) -> None:
    """SQLITE_CORRUPT from a table page overwritten with garbage: corrupt."""
    path = tmp_path / "damaged.sqlite"
    conn = connect(path, busy_timeout_ms=0, pragmas=("page_size = 4096",))
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,) for _ in range(100)])
    conn.close()
    with path.open("r+b") as file:  # page 2 onwards: the table's b-tree
        file.seek(4096)
        file.write(b"\xa5" * 8192)
    conn = connect(path, busy_timeout_ms=0)
    try:
        exc = _raised(conn, "SELECT COUNT(*), MAX(length(x)) FROM t")
        assert primary_code(exc) == sqlite3.SQLITE_CORRUPT
        assert kind(exc) is Kind.CORRUPT
        assert is_corruption(exc)
    finally:
        conn.close()


def test_a_write_on_a_read_only_connection_is_readonly(db: Path) -> None:
    """SQLITE_READONLY from a file opened read-only (mode=ro): readonly, not busy."""
    conn = connect(db, busy_timeout_ms=0, read_only=True)
    try:
        exc = _raised(conn, "INSERT INTO t (full_name) VALUES ('b')")
        assert primary_code(exc) == sqlite3.SQLITE_READONLY
        assert kind(exc) is Kind.READONLY
        assert classify(exc).retry_after_s == 5
    finally:
        conn.close()


def test_a_query_only_connection_refuses_writes_as_readonly(db: Path) -> None:
    """The server's readers (``query_only``) get SQLITE_READONLY for a write, too."""
    conn = connect(db, busy_timeout_ms=0, pragmas=("query_only = ON",))
    try:
        exc = _raised(conn, "DELETE FROM t")
        assert kind(exc) is Kind.READONLY
    finally:
        conn.close()


_FILE_SIZE_LIMIT = """
import resource, signal, sqlite3, sys
from server.sqlite.errors import kind
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("CREATE TABLE t (b BLOB)")
try:
    for _ in range(64):
        conn.execute("INSERT INTO t VALUES (zeroblob(16384))")
except sqlite3.Error as exc:
    print(exc.sqlite_errorname, kind(exc).name)
"""


def test_a_write_the_file_system_refuses_is_an_io_error(tmp_path: Path) -> None:
    """SQLITE_IOERR_WRITE from a write past the process's file size limit (in a child)."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_FILE_SIZE_LIMIT), str(tmp_path / "io.sqlite")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=True,
    )
    assert result.stdout.split() == ["SQLITE_IOERR_WRITE", "IO"]


def test_an_interrupted_statement_is_interrupted(db: Path) -> None:
    """SQLITE_INTERRUPT from a progress handler (what the server's inline reads use)."""
    conn = connect(db, busy_timeout_ms=0)
    conn.set_progress_handler(lambda: 1, 100)
    try:
        exc = _raised(
            conn,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)"
            " SELECT COUNT(*) FROM n",
        )
        assert primary_code(exc) == sqlite3.SQLITE_INTERRUPT
        assert kind(exc) is Kind.INTERRUPTED
    finally:
        conn.close()


def test_an_interrupt_from_another_thread_is_interrupted(db: Path) -> None:
    """SQLITE_INTERRUPT from ``Connection.interrupt()`` called while a query runs."""
    conn = connect(db, busy_timeout_ms=0)
    started = threading.Event()

    def progress() -> int:
        started.set()
        return 0

    conn.set_progress_handler(progress, 1000)
    stopper = threading.Thread(target=lambda: started.wait(10) and conn.interrupt())
    stopper.start()
    try:
        exc = _raised(
            conn,  # ~1e12 rows: only the interrupt ends it
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)"
            " SELECT COUNT(*) FROM n",
        )
        assert kind(exc) is Kind.INTERRUPTED
    finally:
        stopper.join(10)
        conn.close()


def test_a_broken_constraint_is_a_constraint_whatever_its_column_is_called(db: Path) -> None:
    """SQLITE_CONSTRAINT_UNIQUE on a column named ``full_name``: a constraint, not "full"
    (the server's old classifier matched the word in the message and said 30 s)."""
    conn = connect(db, busy_timeout_ms=0)
    try:
        exc = _raised(conn, "INSERT INTO t (full_name) VALUES ('a')")
        assert exc.sqlite_errorcode == sqlite3.SQLITE_CONSTRAINT_UNIQUE  # type: ignore[attr-defined]
        assert kind(exc) is Kind.CONSTRAINT
        assert not is_disk_full(exc)
        answer = classify(exc)
        assert (str(answer), answer.retry_after_s) == ("database unavailable", 5)
        exc = _raised(conn, "INSERT INTO t (full_name) VALUES (NULL)")
        assert kind(exc) is Kind.CONSTRAINT
    finally:
        conn.close()


def test_errors_without_an_sqlite_code_are_other() -> None:
    """sqlite3's own errors (closed connection, wrong bindings) carry no code: OTHER."""
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.ProgrammingError) as info:
        conn.execute("SELECT ?", (1, 2))
    assert primary_code(info.value) is None
    assert kind(info.value) is Kind.OTHER
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError) as info:
        conn.execute("SELECT 1")
    assert kind(info.value) is Kind.OTHER
    assert classify(info.value).retry_after_s == 5
    assert kind(ValueError("database is locked")) is Kind.OTHER  # a message decides nothing


def test_a_missing_directory_is_other(tmp_path: Path) -> None:
    """SQLITE_CANTOPEN (no such directory) is none of the named kinds."""
    with pytest.raises(sqlite3.OperationalError) as info:
        connect(tmp_path / "absent" / "x.sqlite", busy_timeout_ms=0)
    assert primary_code(info.value) == sqlite3.SQLITE_CANTOPEN
    assert kind(info.value) is Kind.OTHER


def test_an_os_error_for_no_space_is_disk_full() -> None:
    """A full disk seen by the OS (ENOSPC, EDQUOT, EFBIG) before SQLite: disk full."""
    import errno

    for number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        assert is_disk_full(OSError(number, os.strerror(number)))
    assert not is_disk_full(OSError(errno.EIO, "I/O error"))


def test_the_write_gate_times_out_as_sqlite_busy_would() -> None:
    """spoold's in-process write gate raises an error with SQLITE_BUSY's code."""
    gate = WriteGate(timeout_s=0.01)
    gate.acquire(urgent=True)
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            gate.acquire(urgent=True)
        assert is_busy(info.value)
        assert classify(info.value).retry_after_s == 1
    finally:
        gate.release()


def test_a_coded_error_is_classified_like_sqlites_own() -> None:
    """An error built with a code (a corruption an integrity check reported) classifies."""
    exc = coded_error(sqlite3.DatabaseError, "x", sqlite3.SQLITE_CORRUPT_INDEX, "X")
    assert isinstance(exc, sqlite3.DatabaseError)
    assert is_corruption(exc)
