"""The drainer's settle in short slices, so the accept path never waits long behind it.

A round is settled in several index commits while accepts arrive; the index's write
gate lets a waiting accept transaction in between them, before the drainer's next
slice; each slice's mark says how far the settle got, and start-up finishes a settle a
crash cut short (counted once, never sent again). The prune deletes in slices too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from spool_helpers import SpoolFactory, accept
from structlog.testing import capture_logs

from spoold import app as spoold_app
from spoold.forward import record as record_module
from spoold.forward.handoff import LocalFaults, Slot, StopClock
from spoold.forward.record import RecordStage
from spoold.forward.rounds import Delivered, DrainStats
from spoold.state import runs_index
from spoold.state.ledger import Counts, Ledger
from spoold.state.recovery import reconcile
from spoold.state.runs_index import RunsIndex, Settling
from spoold.upstream.retry import Backoff


def create(name: str) -> dict[str, Any]:
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}


def update(name: str, **changes: Any) -> dict[str, Any]:
    return {"kind": "update", "event_id": name, "body": changes}


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    return tmp_path / "index.sqlite"


@pytest.fixture
def indexes(index_path: Path) -> Iterator[list[RunsIndex]]:
    opened: list[RunsIndex] = []
    yield opened
    for index in opened:
        index.close()


def recorder(spool: Any, index: RunsIndex, ledger: Ledger, stats: DrainStats) -> RecordStage:
    """The drain's record stage alone (no upstream, no dead letters in these tests)."""
    faults = LocalFaults(Backoff(base_s=1.0, cap_s=1.0), StopClock())
    return RecordStage(Slot(), spool, index, ledger, stats, faults)


def open_index(opened: list[RunsIndex], path: Path, **kwargs: Any) -> RunsIndex:
    index = RunsIndex(path, **kwargs)
    opened.append(index)
    return index


def test_a_waiting_accept_transaction_goes_before_the_drainers_next_slice(
    index_path: Path, indexes: list[RunsIndex]
) -> None:
    """While a drain slice holds the index, an accept transaction and the next drain
    slice both wait; the accept one gets the index first when the slice ends (the gate
    wakes its waiters on the commit: no polling sleep, and no timing asserted here)."""
    drain = open_index(indexes, index_path, synchronous="FULL", yields=True)
    drain_next = open_index(indexes, index_path, synchronous="FULL", yields=True)
    acceptor = open_index(indexes, index_path)
    order: list[str] = []

    def write(index: RunsIndex, name: str) -> None:
        index.begin()
        order.append(name)
        index.add_counter("accepted", 1)
        index.commit()

    drain.begin()
    accept_thread = threading.Thread(target=write, args=(acceptor, "accept"))
    accept_thread.start()
    for _ in range(500):  # bounded: until the accept transaction waits at the gate
        if drain.gate._urgent_waiting:
            break
        time.sleep(0.002)
    drain_thread = threading.Thread(target=write, args=(drain_next, "drain"))
    drain_thread.start()
    time.sleep(0.05)
    assert order == []  # both wait while the slice holds the index
    drain.commit()
    accept_thread.join(5)
    drain_thread.join(5)

    assert order == ["accept", "drain"]
    assert acceptor.counters()["accepted"] == 2


def test_a_write_that_never_ends_times_out_at_the_gate(
    index_path: Path, indexes: list[RunsIndex]
) -> None:
    """A writer stuck in its transaction makes the others fail like a busy SQLite file,
    not hang forever."""
    holder = open_index(indexes, index_path)
    other = open_index(indexes, index_path, yields=True)
    other.gate._timeout_s = 0.2
    holder.begin()
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.begin()
    finally:
        holder.rollback()
    other.begin()  # free again once the holder let go
    other.rollback()


def test_a_failed_begin_or_rollback_lets_go_of_the_gate(
    index_path: Path, indexes: list[RunsIndex]
) -> None:
    index = open_index(indexes, index_path)
    index.begin()
    index.rollback()
    index.rollback()  # a second rollback releases nothing twice
    index.begin()
    index.commit()
    assert not index.gate._held


async def test_a_settle_cut_short_between_slices_is_finished_at_start_up(
    make_spool: SpoolFactory, index_path: Path, indexes: list[RunsIndex]
) -> None:
    """kill -9 after the first slices of a settle (no spool ack): start-up settles the
    rest - forwarded and dead-lettered as delivered - and acks the items without
    sending them again; the counters add up and the runs are settled once."""
    spool, index = make_spool(), open_index(indexes, index_path)
    await accept(spool, index, create("a"), create("b"))
    await accept(spool, index, update("a", status="done"), create("c"), create("d"))
    groups = spool.get_groups(100)
    ops = [op for group in groups for op in group.ops]
    assert [op["event_id"] for op in ops] == ["a", "b", "a", "c", "d"]
    drain = open_index(indexes, index_path, synchronous="FULL", yields=True)
    mark = Settling([g.id for g in groups], ops=5, done=2, dead=(3,))  # "c" dead-lettered
    drain.settle_slice({"a": 1, "b": 1}, {}, mark, durable=False)
    spool.close()  # the crash: no further slice, no ack
    for opened in indexes:
        opened.close()
    indexes.clear()

    spool, index = make_spool(), open_index(indexes, index_path)
    counts = reconcile(spool, index)

    assert counts == Counts(accepted=5, forwarded=4, queued=0, dead_lettered=1)
    assert counts.adds_up
    assert index.settling().complete
    assert spool.stats().depth_ops == 0
    assert spool.get_groups(100) == []  # nothing is sent again
    for name in "abcd":
        run = index.get(name)
        assert run is not None
        assert run.pending == 0
    assert reconcile(spool, index) == counts  # finished once, not at every start


async def test_a_settle_mark_from_one_commit_still_reads(
    make_spool: SpoolFactory, index_path: Path, indexes: list[RunsIndex]
) -> None:
    """The one-commit mark (a plain list, what older spoolds wrote) is a complete settle."""
    index = open_index(indexes, index_path)
    index.settle({}, {}, [3, 1])
    assert index.settling() == Settling([1, 3])
    assert index.settling().complete
    assert index.settling_ids() == [1, 3]


async def test_the_drainer_settles_in_slices_while_accepts_arrive(
    make_spool: SpoolFactory,
    index_path: Path,
    indexes: list[RunsIndex],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the accept path writing, a round settles SETTLE_SLICE_OPS at a time, in order,
    none fsync'd in its commit; then the index's WAL is fsync'd once, and the spool ack
    comes after that."""
    spool, index = make_spool(), open_index(indexes, index_path)
    await accept(spool, index, *(create(f"r{i}") for i in range(7)))
    groups = spool.get_groups(100)
    event_ids = [op["event_id"] for group in groups for op in group.ops]
    drain_index = open_index(indexes, index_path, synchronous="FULL", yields=True)
    ledger = Ledger(Counts(accepted=7, queued=7))
    stats = DrainStats()
    stage = recorder(spool, drain_index, ledger, stats)
    monkeypatch.setattr(record_module, "SETTLE_SLICE_OPS", 3)
    drain_index.gate.last_urgent = time.monotonic() + 60  # the accept path is busy
    steps: list[tuple[str, int, bool]] = []
    settle_slice, ack = drain_index.settle_slice, spool.ack

    def recording_slice(
        forwarded: dict[str, int], dead: dict[str, int], mark: Settling, *, durable: bool
    ) -> None:
        assert spool.stats().depth_ops == 7  # nothing acked before the settle is complete
        steps.append(("slice", mark.done, durable))
        settle_slice(forwarded, dead, mark, durable=durable)

    def recording_ack(acked: Any) -> None:
        steps.append(("ack", 0, True))
        ack(acked)

    sync = drain_index.sync

    def recording_sync() -> None:
        steps.append(("sync", 0, True))
        sync()

    monkeypatch.setattr(drain_index, "settle_slice", recording_slice)
    monkeypatch.setattr(drain_index, "sync", recording_sync)
    monkeypatch.setattr(spool, "ack", recording_ack)

    stage.record(Delivered(groups, event_ids, frozenset({4}), time.perf_counter()))

    assert steps == [
        ("slice", 3, False),
        ("slice", 6, False),
        ("slice", 7, False),
        ("sync", 0, True),
        ("ack", 0, True),
    ]
    assert ledger.snapshot() == Counts(accepted=7, forwarded=6, dead_lettered=1, queued=0)
    counters = drain_index.counters()
    assert (counters["forwarded"], counters["dead_lettered"]) == (6, 1)
    assert drain_index.settling().complete
    assert spool.stats().depth_ops == 0
    assert stats.operations_forwarded == 6


async def test_without_accepts_a_round_settles_in_one_commit(
    make_spool: SpoolFactory,
    index_path: Path,
    indexes: list[RunsIndex],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spool, index = make_spool(), open_index(indexes, index_path)
    await accept(spool, index, *(create(f"r{i}") for i in range(7)))
    groups = spool.get_groups(100)
    event_ids = [op["event_id"] for group in groups for op in group.ops]
    drain_index = open_index(indexes, index_path, synchronous="FULL", yields=True)
    stage = recorder(spool, drain_index, Ledger(Counts(accepted=7, queued=7)), DrainStats())
    monkeypatch.setattr(record_module, "SETTLE_SLICE_OPS", 3)
    drain_index.gate.last_urgent = 0.0  # no accept for a long time
    marks: list[Settling] = []
    settle_slice = drain_index.settle_slice

    def recording_slice(
        forwarded: dict[str, int], dead: dict[str, int], mark: Settling, *, durable: bool
    ) -> None:
        marks.append(mark)
        settle_slice(forwarded, dead, mark, durable=durable)

    monkeypatch.setattr(drain_index, "settle_slice", recording_slice)
    stage.record(Delivered(groups, event_ids, frozenset(), time.perf_counter()))
    assert [m.done for m in marks] == [7]
    assert drain_index.counters()["forwarded"] == 7


def test_prune_deletes_in_short_transactions(
    index_path: Path, indexes: list[RunsIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each prune transaction deletes at most PRUNE_SLICE_ROWS runs, without an fsync
    each (forgetting is redone after a crash); runs still pending are never forgotten."""
    monkeypatch.setattr(runs_index, "PRUNE_SLICE_ROWS", 4)
    index = open_index(indexes, index_path, synchronous="FULL", yields=True)
    index.begin()
    for i in range(10):
        index.record(create(f"s{i}"), verified=True)
    index.record(create("kept"), verified=True)
    index.commit()
    index.settle({f"s{i}": 1 for i in range(10)}, {})
    commits: list[int] = []
    real_commit = index.commit

    def counting_commit() -> None:
        commits.append(index.synchronous())
        real_commit()

    monkeypatch.setattr(index, "commit", counting_commit)
    removed = index.prune(keep_s=-1)
    assert removed == 10
    assert commits == [1, 1, 1]  # 4 + 4 + 2 runs, each commit NORMAL (no fsync)
    assert index.synchronous() == 2  # FULL again for the settles
    assert index.get("kept") is not None
    assert all(index.get(f"s{i}") is None for i in range(10))


def test_a_waiting_put_goes_before_the_drainers_next_spool_write(
    make_spool: SpoolFactory,
) -> None:
    """persist-queue's transaction lock is the spool's put-first lock: while a drain write
    holds it, a put and the drainer's next ack both wait; the put goes first."""
    spool = make_spool()
    spool.put_group([create("a")])
    groups = spool.get_groups(10)
    lock = spool._queue.tran_lock
    order: list[str] = []

    def put() -> None:
        spool.put_group([create("b")])
        order.append("put")

    def ack() -> None:
        spool.ack(groups)
        order.append("ack")

    with lock:  # a drain write in progress (not urgent: not inside a put)
        putter = threading.Thread(target=put)
        putter.start()
        for _ in range(500):  # bounded: until the put waits at the lock
            if lock.gate._urgent_waiting:
                break
            time.sleep(0.002)
        assert lock.gate._urgent_waiting == 1
        acker = threading.Thread(target=ack)
        acker.start()
        time.sleep(0.05)
        assert order == []
    putter.join(5)
    acker.join(5)

    assert order == ["put", "ack"]
    assert spool.stats().depth_ops == 1
    assert [op["event_id"] for g in spool.get_groups(10) for op in g.ops] == ["b"]


def test_closing_in_a_transaction_lets_go_of_the_gate(
    index_path: Path, indexes: list[RunsIndex]
) -> None:
    """A connection closed mid-transaction (a stop at the wrong moment) does not leave the
    other connections to the file waiting at the gate."""
    first = RunsIndex(index_path)
    first.begin()
    first.close()
    other = open_index(indexes, index_path, yields=True)
    other.gate._timeout_s = 0.5
    other.begin()
    other.commit()


def test_a_finished_sliced_settle_leaves_the_mark_an_older_spoold_reads(
    index_path: Path, indexes: list[RunsIndex]
) -> None:
    """Once the last slice is committed the mark is a plain list of item ids again, the
    form every older spoold parses (``[int(i) for i in mark]``): stopping this spoold
    and starting an older one on the same directory must not fail at start-up (a dict
    mark makes it raise). Only a crash between two slices leaves the longer form."""
    drain = open_index(indexes, index_path, synchronous="FULL", yields=True)
    drain.settle_slice({"a": 1}, {}, Settling([7, 5], ops=3, done=1, dead=(2,)), durable=False)
    assert not drain.settling().complete
    drain.settle_slice({"b": 1}, {"c": 1}, Settling([7, 5], ops=3, done=3, dead=(2,)))
    raw = drain._mark(runs_index.SETTLING)
    assert raw is not None
    older_spoolds_parse = [int(i) for i in orjson.loads(raw)]
    assert older_spoolds_parse == [5, 7]
    assert drain.settling().complete
    assert drain.settling_ids() == [5, 7]


async def test_a_settle_keeps_every_runs_state(
    make_spool: SpoolFactory, index_path: Path, indexes: list[RunsIndex]
) -> None:
    """Forwarded and dead-lettered operations of one run both leave its pending count; a
    run with operations still queued, or with a dead letter, keeps its whole snapshot; a
    run settled in full shrinks to its run_id; a run the index does not know is skipped."""
    spool, index = make_spool(), open_index(indexes, index_path)
    ops = [create("done"), create("two"), update("two", status="success"), create("dead")]
    ops += [create("mixed"), update("mixed", status="failure"), update("mixed", status="x")]
    await accept(spool, index, *ops)
    drain = open_index(indexes, index_path, synchronous="FULL", yields=True)
    forwarded = {"done": 1, "two": 1, "mixed": 2, "unknown": 3}
    dead = {"dead": 1, "mixed": 1}
    drain.settle_slice(forwarded, dead, Settling([1, 2], 8, 8))

    def state(event_id: str) -> tuple[int, bool, dict[str, Any], int]:
        run = drain.get(event_id)
        assert run is not None
        letters = drain._conn.execute(
            "SELECT letters FROM runs WHERE event_id = ?", (event_id,)
        ).fetchone()[0]
        return run.pending, run.complete, run.snapshot, int(letters)

    assert state("done") == (0, False, {"run_id": "r-done"}, 0)
    assert state("two") == (1, True, {"event_id": "two", "run_id": "r-two", "status": "success"}, 0)
    assert state("dead")[:2] == (0, True)
    assert state("dead")[3] == 1
    assert state("mixed")[:2] == (0, True)
    assert state("mixed")[3] == 1
    assert drain.get("unknown") is None
    counters = drain.counters()
    assert (counters["forwarded"], counters["dead_lettered"]) == (7, 2)
    assert drain.settling() == Settling([1, 2])


def settled_runs(index: RunsIndex, count: int) -> RunsIndex:
    """``index`` with runs s0.. accepted and delivered (settled: what a prune forgets)."""
    index.begin()
    for i in range(count):
        index.record(create(f"s{i}"), verified=True)
    index.commit()
    index.settle({f"s{i}": 1 for i in range(count)}, {})
    return index


async def test_the_pruner_outlives_a_failed_pass(
    index_path: Path, indexes: list[RunsIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the index's write lock past the busy timeout: the pass fails
    and is logged, and the next pass, once the lock is gone, forgets the settled runs (the
    task used to end at the first error, and the index's bound with it)."""
    monkeypatch.setattr(runs_index, "INDEX_BUSY_TIMEOUT_MS", 50)
    monkeypatch.setattr(spoold_app, "PRUNE_EVERY_S", 0.05)
    index = settled_runs(open_index(indexes, index_path, yields=True), 10)
    other = sqlite3.connect(index_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with capture_logs() as logs:
        pruner = asyncio.create_task(spoold_app._prune(index, -1.0, 1 << 30, lambda: 0))
        try:
            for _ in range(200):  # a failed pass: at most 10 s
                if any(entry["event"] == "runs_index_prune_failed" for entry in logs):
                    break
                await asyncio.sleep(0.05)
            assert any(entry["event"] == "runs_index_prune_failed" for entry in logs)
            assert index.get("s0") is not None
            other.execute("ROLLBACK")
            for _ in range(200):  # then a pass that works: at most 10 s
                if index.get("s9") is None:
                    break
                await asyncio.sleep(0.05)
            assert not pruner.done()
            assert all(index.get(f"s{i}") is None for i in range(10))
        finally:
            pruner.cancel()
            await asyncio.wait({pruner}, timeout=5)
            other.close()
    assert any(entry["event"] == "runs_index_pruned" for entry in logs)


def test_a_close_during_a_prune_pass_ends_it_at_its_next_slice(
    index_path: Path, indexes: list[RunsIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    """spoold's stop cancels the pruner's task, but its pass goes on on its thread; the
    close that follows ends the pass at its next slice and waits for it (it used to close
    the connection under the pass's statements: a segfault)."""
    monkeypatch.setattr(runs_index, "PRUNE_SLICE_ROWS", 8)
    index = settled_runs(open_index(indexes, index_path, yields=True), 3000)
    # The pass's second slice waits, at its begin, until the close has started.
    second_slice = threading.Event()
    begins: list[int] = []
    begin = index.begin

    def begin_after_the_first_slice() -> None:
        begins.append(1)
        if len(begins) == 2:
            second_slice.set()
            assert index._closing.wait(10)
        begin()

    monkeypatch.setattr(index, "begin", begin_after_the_first_slice)
    outcome: list[object] = []

    def pass_on_its_thread() -> None:
        try:
            outcome.append(index.prune(keep_s=-1.0))
        except BaseException as exc:  # what the thread would die of
            outcome.append(exc)

    thread = threading.Thread(target=pass_on_its_thread)
    thread.start()
    try:
        assert second_slice.wait(10)
        index.close()  # returns once the pass stopped: no statement runs after it
        thread.join(timeout=10)
        assert not thread.is_alive()
    finally:
        thread.join(timeout=10)
    # The slice under way when the close came was committed; none after it began.
    assert outcome == [16]
    with contextlib.closing(sqlite3.connect(index_path)) as watcher:
        assert watcher.execute("SELECT count(*) FROM runs").fetchone()[0] == 3000 - 16


def test_a_close_that_cannot_wait_leaves_the_connection_to_the_exit(
    index_path: Path, indexes: list[RunsIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread's statement outlasts ``CLOSE_WAIT_S`` (a prune slice stuck behind the
    write gate): close returns, says so in the log, and never closes under the statement."""
    monkeypatch.setattr(runs_index, "CLOSE_WAIT_S", 0.1)
    index = settled_runs(open_index(indexes, index_path, yields=True), 3)
    index._use.acquire()  # the other thread, mid-statement
    try:
        with capture_logs() as logs:
            started = time.monotonic()
            index.close()
            waited = time.monotonic() - started
        assert 0.1 <= waited < 5
        assert [entry["event"] for entry in logs] == ["runs_index_close_abandoned"]
        assert index._conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 3  # still open
    finally:
        index._use.release()
