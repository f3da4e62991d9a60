"""The drainer's fsyncs are made outside the locks the accept path needs.

The drain's settle commits in the runs index and its acks in the spool commit without
an fsync; one fsync of each file's WAL (``server.sqlite.wal_sync``) follows, with no
gate or lock held, so an agent's write never waits for the drain's disk flush. What must
still hold: each fsync happens before the step that depends on it (the index's before
the spool ack, the spool's before the ack returns), a failed fsync is retried without
counting or settling anything twice, and every put still commits with
synchronous=FULL however the drainer's writes interleave with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory, accept, op
from spool_helpers import create_run as create

from spoold.forward.handoff import LocalFaults, Slot, StopClock
from spoold.forward.record import RecordStage
from spoold.forward.rounds import Delivered, DrainStats
from spoold.spool import Spool, SpoolWriteError, layout
from spoold.spool.writegate import PutFirstLock
from spoold.state.ledger import Counts, Ledger
from spoold.state.runs_index import RunsIndex
from spoold.upstream.retry import Backoff

WAIT_S = 10.0


def recorder(spool: Spool, index: RunsIndex, ledger: Ledger) -> RecordStage:
    faults = LocalFaults(Backoff(base_s=0.01, cap_s=0.01), StopClock())
    return RecordStage(Slot(), spool, index, ledger, DrainStats(), faults)


async def one_round(spool: Spool, index: RunsIndex, n: int) -> Delivered:
    await accept(spool, index, *(create(f"r{i}") for i in range(n)))
    groups = spool.get_groups(n)
    event_ids = [o["event_id"] for g in groups for o in g.ops]
    return Delivered(groups, event_ids, frozenset(), time.perf_counter())


class BlockedSync:
    """Replaces a ``WalSync``'s ``sync``: waits until released (bounded), then fsyncs."""

    def __init__(self, real: Callable[[], None]) -> None:
        self._real = real
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        assert self.release.wait(WAIT_S), "never released"
        self._real()


class FailingFsync:
    """``os.fsync`` failing with EIO for one file (by its path), once; the rest real."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._real = os.fsync
        self.failed = 0

    def __call__(self, fd: int) -> None:
        if not self.failed and os.readlink(f"/proc/self/fd/{fd}") == self._path:
            self.failed += 1
            raise OSError(errno.EIO, "Input/output error")
        self._real(fd)


def in_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


@contextlib.contextmanager
def fsync_held(wal_sync: Any, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` in a thread until it is inside ``wal_sync``'s fsync, held there
    while the block runs; then let it finish (it must succeed)."""
    blocked = BlockedSync(wal_sync.sync)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wal_sync, "sync", blocked)
        thread, errors = in_thread(action)
        try:
            assert blocked.entered.wait(WAIT_S)
            yield
        finally:
            blocked.release.set()
            thread.join(WAIT_S)
    assert not thread.is_alive()
    assert not errors


async def test_an_accept_commits_while_the_settle_is_being_fsynced(
    make_spool: SpoolFactory, indexes: tuple[RunsIndex, RunsIndex]
) -> None:
    accepting, draining = indexes
    spool = make_spool()
    delivered = await one_round(spool, accepting, 5)
    stage = recorder(spool, draining, Ledger(Counts(accepted=5, queued=5)))
    with fsync_held(draining._wal_sync, lambda: stage.record(delivered)):
        # The drain is inside its fsync: the accept path's index write and spool put go now.
        started = time.monotonic()
        accepting.begin()
        accepting.record(create("late"), verified=True)
        accepting.commit()
        spool.put_group([create("late")])
        assert time.monotonic() - started < WAIT_S / 2
        assert spool.stats().depth_ops == 6  # nothing acked before the settle is on disk
    assert spool.stats().depth_ops == 1
    assert draining.counters()["forwarded"] == 5


async def test_a_put_commits_while_the_ack_is_being_fsynced(
    make_spool: SpoolFactory, indexes: tuple[RunsIndex, RunsIndex]
) -> None:
    accepting, _ = indexes
    spool = make_spool()
    delivered = await one_round(spool, accepting, 3)
    with fsync_held(spool._wal_sync, lambda: spool.ack(delivered.groups)):
        started = time.monotonic()
        spool.put_group([op(1)])
        assert time.monotonic() - started < WAIT_S / 2
        assert spool.synchronous_modes() == [2] * len(spool.synchronous_modes())
    assert [o["seq"] for g in spool.get_groups(10) for o in g.ops] == [1]


async def test_each_wal_is_fsynced_in_order_before_the_step_that_needs_it(
    make_spool: SpoolFactory,
    indexes: tuple[RunsIndex, RunsIndex],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real fsync calls, by the file they flush: the index's WAL (after the last
    slice's commit), then the spool's (after the acks' commits); at rest every spool
    connection is FULL again."""
    accepting, draining = indexes
    spool = make_spool()
    delivered = await one_round(spool, accepting, 4)
    real_fsync = os.fsync
    flushed: list[str] = []
    depth_at_flush: list[int] = []

    def recording_fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        depth_at_flush.append(spool.stats().depth_ops)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    recorder(spool, draining, Ledger(Counts(accepted=4, queued=4))).record(delivered)
    monkeypatch.undo()
    index_wal, spool_wal = f"{draining.path}-wal", f"{spool.directory / layout.DB_FILE}-wal"
    assert [Path(p).name for p in flushed if p in (index_wal, spool_wal)] == [
        Path(index_wal).name,
        Path(spool_wal).name,
    ]
    assert depth_at_flush[flushed.index(index_wal)] == 4  # the ack had not begun
    assert depth_at_flush[flushed.index(spool_wal)] == 0  # the acks were committed
    assert spool.synchronous_modes() == [2] * len(spool.synchronous_modes())


@pytest.mark.parametrize("failing_file", ["index", "spool"])
async def test_a_failed_fsync_is_final_and_nothing_counts_twice(
    make_spool: SpoolFactory,
    indexes: tuple[RunsIndex, RunsIndex],
    monkeypatch: pytest.MonkeyPatch,
    failing_file: str,
) -> None:
    """After a failed fsync nothing can be promised about the commits before it: the
    record fails, and so does every retry (the fsync is not tried again: until a
    restart), without settling anything again. A failed settle fsync holds the spool
    ack back; a failed ack fsync holds back the next round's settle."""
    accepting, draining = indexes
    spool = make_spool()
    delivered = await one_round(spool, accepting, 6)
    ledger = Ledger(Counts(accepted=6, queued=6))
    stage = recorder(spool, draining, ledger)
    wal = {"index": f"{draining.path}-wal", "spool": f"{spool.directory / layout.DB_FILE}-wal"}
    failing = FailingFsync(wal[failing_file])
    monkeypatch.setattr(os, "fsync", failing)
    settles: list[int] = []
    settle_slice = draining.settle_slice

    def counted(*args: Any, **kwargs: Any) -> None:
        settles.append(1)
        settle_slice(*args, **kwargs)

    monkeypatch.setattr(draining, "settle_slice", counted)
    with pytest.raises((OSError, SpoolWriteError), match="Input/output"):
        stage.record(delivered)
    for _ in range(3):  # the retries
        with pytest.raises((OSError, SpoolWriteError), match="earlier fsync"):
            stage.record(delivered)
    assert failing.failed == 1
    assert len(settles) == 1
    assert draining.counters()["forwarded"] == 6
    assert ledger.snapshot() == Counts(accepted=6, forwarded=6, queued=0)
    if failing_file == "index":
        assert spool.stats().depth_ops == 6  # never acked: the settle may not be on disk


async def test_the_start_up_repairs_discard_is_fsynced(
    make_spool: SpoolFactory,
    indexes: tuple[RunsIndex, RunsIndex],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recovery's acks of delivered items are on disk before the drain's first settle
    (which overwrites the mark naming them)."""
    accepting, _ = indexes
    spool = make_spool()
    await accept(spool, accepting, *(create(f"r{i}") for i in range(3)))
    ids = list(range(1, spool.last_allocated_id() + 1))  # live, never handed out
    real_fsync = os.fsync
    flushed: list[tuple[str, int]] = []

    def recording_fsync(fd: int) -> None:
        flushed.append((os.readlink(f"/proc/self/fd/{fd}"), spool.stats().depth_ops))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert spool.discard(ids) == 3
    monkeypatch.undo()
    assert (f"{spool.directory / layout.DB_FILE}-wal", 0) in flushed


def test_every_put_commits_full_however_the_drainers_writes_interleave(
    make_spool: SpoolFactory,
) -> None:
    """Two threads: puts, and the drainer's get/ack/nack. A trace of every statement on
    the spool's connections shows each put's INSERT running while its connection was
    last set to FULL with SQLite's auto-checkpoint (or never changed), and each of the
    drainer's deletes relaxed: NORMAL, no auto-checkpoint."""
    spool = make_spool()
    connections: list[sqlite3.Connection] = [*spool._queue.connections, spool._side]
    pages = str(connections[0].execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    mode: dict[tuple[int, str], str] = {}
    relaxed: list[int] = []  # drainer writes (deletes, marks) seen relaxed
    bad: list[str] = []
    trace_lock = threading.Lock()

    def tracer(index: int) -> Callable[[str], None]:
        def trace(statement: str) -> None:
            with trace_lock:
                text = " ".join(statement.split()).upper()
                for name in ("SYNCHRONOUS", "WAL_AUTOCHECKPOINT"):
                    if text.startswith(f"PRAGMA {name} ="):
                        mode[(index, name)] = text.rsplit("=", 1)[1].strip()
                now = (
                    mode.get((index, "SYNCHRONOUS"), "FULL"),
                    mode.get((index, "WAL_AUTOCHECKPOINT"), pages),
                )
                if text.startswith("INSERT") and now != ("FULL", pages):
                    bad.append(f"put {index}: {statement} under {now}")
                elif text.startswith(("UPDATE", "DELETE")):
                    if now != ("NORMAL", "0"):
                        bad.append(f"drainer {index}: {statement} under {now}")
                    relaxed.append(index)

        return trace

    for index, conn in enumerate(connections):
        conn.set_trace_callback(tracer(index))
    stop = threading.Event()
    puts = 300

    def writer() -> None:
        for i in range(puts):
            spool.put_group([op(i)])
        stop.set()

    def drainer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            groups = spool.get_groups(7)
            if len(groups) > 1:
                spool.nack(groups[1:])
            spool.ack(groups[:1])
            if stop.is_set() and not groups:
                return

    threads = [threading.Thread(target=t, daemon=True) for t in (writer, drainer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    for conn in connections:
        conn.set_trace_callback(None)
    assert not any(thread.is_alive() for thread in threads)
    assert len(relaxed) >= puts // 7  # the drainer's writes ran, in between the puts
    assert not bad, bad[:5]
    assert spool.stats().depth_ops == 0
    assert spool.synchronous_modes() == [2] * len(spool.synchronous_modes())


class FakeConnection:
    """Records the synchronous modes it is given; fails the ones listed in ``fail``."""

    def __init__(self) -> None:
        self.modes: list[str] = []
        self.fail: set[str] = set()

    def execute(self, statement: str) -> None:
        if not statement.startswith("PRAGMA synchronous"):
            return
        mode = statement.rsplit("=", 1)[1].strip()
        if mode in self.fail:
            self.fail.discard(mode)
            raise sqlite3.OperationalError("disk I/O error")
        self.modes.append(mode)


def test_a_put_sets_full_itself_when_restoring_it_failed() -> None:
    lock = PutFirstLock()
    conn = FakeConnection()
    lock.relax([conn], autocheckpoint_pages=1000)  # type: ignore[list-item]
    conn.fail = {"FULL"}
    with lock:  # a drainer's write: it committed, so the failed restore is only logged
        pass
    assert conn.modes == ["NORMAL"]  # left NORMAL: restoring FULL failed
    with lock.urgent(), lock:  # the next put
        assert conn.modes == ["NORMAL", "FULL"]


def test_a_put_that_cannot_set_full_fails_and_lets_go_of_the_lock() -> None:
    lock = PutFirstLock()
    conn = FakeConnection()
    lock.relax([conn], autocheckpoint_pages=1000)  # type: ignore[list-item]
    conn.fail = {"FULL"}
    with lock:  # the drainer's write: left NORMAL
        pass
    conn.fail = {"FULL"}
    ran: list[int] = []
    with pytest.raises(sqlite3.OperationalError), lock.urgent(), lock:
        ran.append(1)  # never: the put does not run under NORMAL
    assert not ran
    acquired, _ = in_thread(lambda: lock.gate.acquire(urgent=True))
    acquired.join(WAIT_S)
    assert not acquired.is_alive()  # the gate was released
    lock.gate.release()
