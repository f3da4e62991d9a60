"""Every slow accept commit is attributed: what the accept thread was doing meanwhile.

A write's answer waits for its group's commit (classify in the runs index, the spool's
put and fsync, the index commit). A commit slower than ``SLOW_COMMIT_S`` is logged as
``accept_commit_slow`` with the time of each phase, the garbage collection that ran in
the process meanwhile, and how long each WAL checkpointer (the spool's, the index's)
was running during it, so a pause seen by an agent can be traced to its cause.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory
from structlog.testing import capture_logs

from spoold.accept import slow_commits
from spoold.accept.acceptor import Acceptor
from spoold.spool import store
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex

SCHEDSTAT = Path("/proc/self/schedstat").exists()
#: The pause injected in one phase: long beside what a loaded machine adds to the others.
PAUSE_S = 0.4


def create(name: str) -> dict[str, Any]:
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}


async def commit_once(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch, slow: str
) -> list[dict[str, Any]]:
    spool, index = make_spool(), RunsIndex(tmp_path / "index.sqlite")
    acceptor = Acceptor(spool, index, Ledger())
    if slow == "put":
        real_put = spool.put_encoded

        def slow_put(*args: Any, **kwargs: Any) -> int:
            time.sleep(PAUSE_S)
            return real_put(*args, **kwargs)

        monkeypatch.setattr(spool, "put_encoded", slow_put)
    elif slow == "busy":
        real_put = spool.put_encoded

        def busy_put(*args: Any, **kwargs: Any) -> int:
            deadline = time.thread_time() + 0.1  # 100 ms of this thread's own CPU
            spins = 0
            while time.thread_time() < deadline and spins < 10**9:
                spins += 1
            return real_put(*args, **kwargs)

        monkeypatch.setattr(spool, "put_encoded", busy_put)
    elif slow == "index":
        real_commit = index.commit

        def slow_commit() -> None:
            time.sleep(PAUSE_S)
            real_commit()

        monkeypatch.setattr(index, "commit", slow_commit)
    elif slow == "gc":
        real_put = spool.put_encoded

        def collecting_put(*args: Any, **kwargs: Any) -> int:
            garbage: list[Any] = []
            for _ in range(300_000):  # a reference cycle per element: a real collection
                node: list[Any] = []
                node.append(node)
                garbage.append(node)
            del garbage, node
            gc.collect()
            time.sleep(slow_commits.SLOW_COMMIT_S)  # slow enough to be logged, GC or not
            return real_put(*args, **kwargs)

        monkeypatch.setattr(spool, "put_encoded", collecting_put)
    elif slow == "checkpoint":
        real_checkpoint = store.checkpoint

        checkpointing = threading.Event()

        def slow_checkpoint(conn: Any) -> tuple[int, int]:
            checkpointing.set()
            time.sleep(3 * PAUSE_S)
            return real_checkpoint(conn)

        monkeypatch.setattr(store, "checkpoint", slow_checkpoint)
        real_put = spool.put_encoded

        def put_during_checkpoint(*args: Any, **kwargs: Any) -> int:
            spool._checkpointer.note_written(1 << 40)  # type: ignore[union-attr]
            assert checkpointing.wait(10)  # the checkpoint runs from here on
            time.sleep(PAUSE_S)
            return real_put(*args, **kwargs)

        monkeypatch.setattr(spool, "put_encoded", put_during_checkpoint)
    drain_index = RunsIndex(tmp_path / "index.sqlite", synchronous="FULL", yields=True)
    holder: threading.Thread | None = None
    if slow == "gate":  # the drainer's connection holds the index's write gate (a settle)
        holding = threading.Event()

        def settle_slice() -> None:
            drain_index.begin()
            holding.set()
            time.sleep(PAUSE_S)
            drain_index.commit()

        holder = threading.Thread(target=settle_slice)
        holder.start()
        assert holding.wait(10)
    acceptor.start()
    try:
        with capture_logs() as logs:
            results = await asyncio.gather(*(acceptor.submit(create(f"e{i}")) for i in range(3)))
    finally:
        await acceptor.close()
        if holder is not None:
            holder.join(10)
        drain_index.close()
        index.close()
    assert [r.outcome for r in results] == ["created"] * 3  # slow, but committed as ever
    return [entry for entry in logs if entry["event"] == "accept_commit_slow"]


async def test_a_slow_spool_put_is_logged_as_such(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (slow,) = await commit_once(tmp_path, make_spool, monkeypatch, "put")
    assert slow["spool_put_ms"] >= 1e3 * PAUSE_S
    assert slow["total_ms"] >= slow["spool_put_ms"]
    assert slow["operations"] == 3
    assert slow["slowest"] == "spool_put"
    assert slow["thread_cpu_ms"] < 0.5e3 * PAUSE_S  # asleep (as in an fsync), not computing


async def test_a_commit_slowed_by_the_threads_own_work_says_so(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (slow,) = await commit_once(tmp_path, make_spool, monkeypatch, "busy")
    if not SCHEDSTAT:
        pytest.skip("no schedstat on this system: thread times read 0")
    assert slow["thread_cpu_ms"] >= 100
    assert slow["thread_cpu_ms"] <= slow["total_ms"] + 1
    assert slow["thread_runqueue_ms"] >= 0
    assert slow["loop_runqueue_ms"] >= 0


async def test_a_slow_index_commit_is_logged_as_such(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (slow,) = await commit_once(tmp_path, make_spool, monkeypatch, "index")
    assert slow["index_commit_ms"] >= 1e3 * PAUSE_S
    assert slow["slowest"] == "index_commit"


async def test_a_commit_waiting_for_the_drains_index_transaction_is_logged_as_such(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (slow,) = await commit_once(tmp_path, make_spool, monkeypatch, "gate")
    assert slow["index_wait_ms"] >= 0.5e3 * PAUSE_S  # the rest of the settle slice
    assert slow["slowest"] == "index_wait"
    assert slow["thread_cpu_ms"] < 0.25e3 * PAUSE_S  # waiting, not working


async def test_garbage_collection_during_a_commit_is_counted(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (slow,) = await commit_once(tmp_path, make_spool, monkeypatch, "gc")
    assert slow["gc_ms"] > 0
    assert slow["gc_ms"] <= slow["total_ms"]


async def test_a_spool_checkpoint_running_during_the_put_is_named(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (slow,) = await commit_once(tmp_path, make_spool, monkeypatch, "checkpoint")
    assert slow["spool_checkpoint_ms"] >= 1e3 * PAUSE_S  # it ran through the whole put
    assert slow["index_checkpoint_ms"] == 0


async def test_fast_commits_are_not_logged(tmp_path: Path, make_spool: SpoolFactory) -> None:
    spool, index = make_spool(), RunsIndex(tmp_path / "index.sqlite")
    acceptor = Acceptor(spool, index, Ledger())
    acceptor.start()
    try:
        with capture_logs() as logs:
            for i in range(5):
                await acceptor.submit(create(f"f{i}"))
    finally:
        await acceptor.close()
        index.close()
    slow = [entry for entry in logs if entry["event"] == "accept_commit_slow"]
    assert all(entry["total_ms"] >= 1e3 * slow_commits.SLOW_COMMIT_S for entry in slow)
    assert acceptor.stats.slow_commits == len(slow)
