"""Reads first run on the event loop's own connection, within a budget; a read that
would exceed it, or wait for a lock, moves to the reader threads and still answers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from server.storage.connection import StorageUnavailable, open_writer
from server.storage.reader import Reader

#: A read that takes far longer than any inline budget (a few hundred ms of SQLite work).
SLOW_SQL = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000)"
    " SELECT count(*) FROM n"
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "reads.sqlite"
    conn = open_writer(path, journal_mode="WAL", synchronous="FULL", busy_timeout_ms=1000)
    conn.execute("CREATE TABLE t (v INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    return path


@pytest.fixture
async def reader(db: Path):  # type: ignore[no-untyped-def]
    reader = Reader(db, threads=2, busy_timeout_ms=5000, inline_budget_s=0.005)
    yield reader
    reader.close()


def count(conn: sqlite3.Connection) -> tuple[int, int]:
    return threading.get_ident(), int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


async def test_a_quick_read_runs_on_the_event_loop(reader: Reader) -> None:
    """No thread hand-off for a read that fits the budget."""
    thread, rows = await reader.run(count)
    assert (thread, rows) == (threading.get_ident(), 1)
    assert reader.deferred == 0


async def test_a_slow_read_moves_to_the_pool_and_answers(reader: Reader) -> None:
    """Interrupted on the loop at its budget, the read starts over on a reader thread;
    the loop runs other work while it does."""
    loop_thread = threading.get_ident()
    ticked = asyncio.Event()
    seen: list[tuple[int, bool]] = []

    def slow(conn: sqlite3.Connection) -> int:
        value = int(conn.execute(SLOW_SQL).fetchone()[0])
        seen.append((threading.get_ident(), ticked.is_set()))
        return value

    async def tick() -> None:
        ticked.set()

    read = asyncio.ensure_future(reader.run(slow))
    ticker = asyncio.ensure_future(tick())
    assert await asyncio.wait_for(read, 60) == 3000000
    await ticker
    assert len(seen) == 1  # the inline attempt never finished
    thread, loop_was_free = seen[0]
    assert thread != loop_thread
    assert loop_was_free  # the loop ran the ticker while the read ran on the pool
    assert reader.deferred == 1


async def test_an_interrupted_read_transaction_does_not_outlive_the_attempt(
    reader: Reader, db: Path
) -> None:
    """A read transaction interrupted on the loop's connection ends there: the next
    inline read sees rows committed since (not a snapshot kept open by the interruption)."""

    def slow_in_transaction(conn: sqlite3.Connection) -> int:
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT count(*) FROM t").fetchone()
            return int(conn.execute(SLOW_SQL).fetchone()[0])
        finally:
            if threading.current_thread() is not threading.main_thread():
                conn.execute("COMMIT")  # the pool's run ends its own transaction

    assert await asyncio.wait_for(reader.run(slow_in_transaction), 60) == 3000000
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("INSERT INTO t VALUES (2)")
    writer.close()
    thread, rows = await reader.run(count)
    assert (thread, rows) == (threading.get_ident(), 2)


async def test_a_read_that_swallows_its_interruption_is_read_again(reader: Reader) -> None:
    """If fn catches the interruption and returns anyway, that partial answer is dropped."""

    def swallowing(conn: sqlite3.Connection) -> str:
        try:
            conn.execute(SLOW_SQL).fetchone()
        except sqlite3.OperationalError:
            return "partial"
        return "whole"

    assert await asyncio.wait_for(reader.run(swallowing), 60) == "whole"
    assert reader.deferred == 1


async def test_a_locked_database_is_waited_for_off_the_loop(reader: Reader, db: Path) -> None:
    """A writer holding an exclusive lock: the inline attempt does not wait (the loop stays
    free); the pool's read waits for the lock under the busy timeout, then answers."""
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (3)")
    holder.execute("COMMIT")  # exclusive locking mode keeps the lock after the commit
    release = threading.Timer(0.5, holder.close)
    release.start()
    try:
        read = asyncio.ensure_future(reader.run(count))
        await asyncio.sleep(0)
        assert not read.done()  # the loop came back while the read waits on the pool
        thread, rows = await asyncio.wait_for(read, 30)
    finally:
        release.join()
    assert thread != threading.get_ident()
    assert rows == 2
    assert reader.deferred == 1


async def test_other_storage_errors_are_still_reported(reader: Reader) -> None:
    """A failing read is a StorageUnavailable (the 503 path), not retried elsewhere."""
    with pytest.raises(StorageUnavailable):
        await reader.run(lambda conn: conn.execute("SELECT * FROM missing_table").fetchall())
    assert reader.deferred == 0


async def test_a_shape_that_overran_goes_straight_to_the_pool(reader: Reader) -> None:
    """A read of a shape known to overrun is not tried on the loop again (its budget
    would be spent for nothing) until the memory of it expires; other shapes still are."""
    loop_thread = threading.get_ident()

    def slow(conn: sqlite3.Connection) -> int:
        return int(conn.execute(SLOW_SQL).fetchone()[0])

    assert await asyncio.wait_for(reader.run(slow, shape="wide window"), 60) == 3000000
    assert reader.deferred == 1
    thread, _ = await reader.run(count, shape="wide window")
    assert thread != loop_thread  # straight to the pool: no second interruption
    assert reader.deferred == 1
    thread, _ = await reader.run(count, shape="one agent")
    assert thread == loop_thread
    thread, _ = await reader.run(count)  # no shape: always tried on the loop
    assert thread == loop_thread


async def test_the_memory_of_a_slow_shape_expires(
    reader: Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.storage.reader.SLOW_SHAPE_MEMORY_S", 0.0)

    def slow(conn: sqlite3.Connection) -> int:
        return int(conn.execute(SLOW_SQL).fetchone()[0])

    assert await asyncio.wait_for(reader.run(slow, shape="s"), 60) == 3000000
    thread, _ = await reader.run(count, shape="s")
    assert thread == threading.get_ident()  # tried on the loop again


#: A read of a few thousand SQLite steps (past the progress handler's interval), a few ms.
SHORT_SQL = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)"
    " SELECT count(*) FROM n"
)


def late_on_the_loop(loop_thread: int) -> Callable[[sqlite3.Connection], int]:
    """A cheap read that runs out of wall time on the loop (it sleeps first: no CPU spent,
    as a preempted loop spends none) and not on the pool."""

    def late(conn: sqlite3.Connection) -> int:
        if threading.get_ident() == loop_thread:
            time.sleep(0.06)  # past the wall bound (10 budgets of 5 ms)
        return int(conn.execute(SHORT_SQL).fetchone()[0])

    return late


async def test_a_shape_that_only_ran_out_of_wall_time_is_tried_on_the_loop_again_soon(
    reader: Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read whose wall time ran out with its CPU budget unspent (here it sleeps; on a
    busy machine the loop is preempted) says nothing about its shape's cost: the shape is
    remembered for ``LATE_SHAPE_MEMORY_S`` only, not the ten seconds of a read that spent
    its CPU budget (every read of a cheap shape then paid the pool's hand-off)."""
    monkeypatch.setattr("server.storage.reader.LATE_SHAPE_MEMORY_S", 0.0)
    loop_thread = threading.get_ident()
    late = late_on_the_loop(loop_thread)

    assert await asyncio.wait_for(reader.run(late, shape="cheap"), 60) == 20000
    assert reader.deferred == 1
    thread, _ = await reader.run(count, shape="cheap")
    assert thread == loop_thread  # tried on the loop again

    def slow(conn: sqlite3.Connection) -> int:
        return int(conn.execute(SLOW_SQL).fetchone()[0])

    # Its CPU budget runs out first, even on a loaded machine (no wall bound to speak of).
    monkeypatch.setattr("server.storage.reader.WALL_BUDGETS", 10_000)
    assert await asyncio.wait_for(reader.run(slow, shape="costly"), 60) == 3000000
    assert reader.deferred == 2
    thread, _ = await reader.run(count, shape="costly")
    assert thread != loop_thread  # its CPU budget spent: the ten seconds hold


async def test_a_shape_late_twice_in_a_row_is_slow(
    reader: Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of wall time a second time within ``SLOW_SHAPE_MEMORY_S`` (a read that waits on
    the disk each time, not one preemption): the shape goes to the pool for that long."""
    monkeypatch.setattr("server.storage.reader.LATE_SHAPE_MEMORY_S", 0.0)
    loop_thread = threading.get_ident()
    late = late_on_the_loop(loop_thread)

    assert await asyncio.wait_for(reader.run(late, shape="cold"), 60) == 20000
    thread, _ = await reader.run(count, shape="other")
    assert thread == loop_thread
    assert await asyncio.wait_for(reader.run(late, shape="cold"), 60) == 20000  # late again
    assert reader.deferred == 2
    thread, _ = await reader.run(count, shape="cold")
    assert thread != loop_thread


async def test_an_error_raised_by_the_sqlite3_module_itself_is_a_storage_error(
    reader: Reader,
) -> None:
    """sqlite3's own errors (a ProgrammingError: wrong bindings, a closed cursor) carry
    no SQLite error code: on the loop's connection they are classified like any other
    (a 503 with a retry), as on the pool, not an AttributeError (a 500)."""

    def misbound(conn: sqlite3.Connection) -> object:
        return conn.execute("SELECT ?", (1, 2)).fetchone()

    with pytest.raises(StorageUnavailable):
        await reader.run(misbound)
    assert reader.deferred == 0


async def test_a_loop_connection_that_cannot_be_opened_is_a_storage_error(
    tmp_path: Path,
) -> None:
    """The loop's connection is opened at the first read; if that fails (no file, no
    permission, no file descriptor left) the read is answered as the pool answers it,
    a storage error (503 with a retry), not a raw sqlite3 error (a 500)."""
    reader = Reader(tmp_path / "missing" / "reads.sqlite", threads=1, inline_budget_s=0.005)
    try:
        with pytest.raises(StorageUnavailable):
            await reader.run(count)
    finally:
        reader.close()
