"""The runs-index pruner writes its deletes out a few MB at a time (``spoold.state.
index_pruner``): every two slices it fsyncs the WAL, copies it into the database and
flushes that, then rests. Without it, a pass forgetting many runs of a large index wrote
hundreds of MB of WAL that reached the disk in one burst, and every fsync of the accept
path waited behind it. A stop ends a pass between slices; a failed flush stops the copies.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from server.sqlite import db_flush
from server.sqlite.db_flush import DatabaseFlush
from spoold.state import index_pruner
from spoold.state.index_pruner import MAX_REST_S, IndexPruner, PrunePacer, PruneStopped
from spoold.state.runs_index import PRUNE_SLICE_ROWS, RunsIndex

RUNS = 12_000


def create(name: str) -> dict[str, Any]:
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}


@pytest.fixture
def settled_index(tmp_path: Path) -> Path:
    """An index of RUNS settled runs with random event_ids (as agents make them): a
    prune's deletes land all over the event_id index, as in a real one."""
    path = tmp_path / "index.sqlite"
    index = RunsIndex(path)
    names = [str(uuid.uuid4()) for _ in range(RUNS)]
    for start in range(0, RUNS, 2000):
        index.begin()
        for name in names[start : start + 2000]:
            index.record(create(name), verified=True)
        index.commit()
    index.settle(dict.fromkeys(names, 1), {})
    index.copy_wal()
    index.close()
    return path


def pruner_index(path: Path) -> RunsIndex:
    """A connection as spoold's pruner has it: no auto-checkpoint inside its commits."""
    index = RunsIndex(path, yields=True)
    index.wal_autocheckpoint(0)
    return index


def wal_bytes(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


def prune_all(index: RunsIndex, pacer: PrunePacer | None, path: Path) -> tuple[int, int]:
    """Forget every settled run; (runs forgotten, the largest WAL seen between slices)."""
    largest = 0

    def after_slice() -> None:
        nonlocal largest
        largest = max(largest, wal_bytes(path))
        if pacer is not None:
            pacer.after_slice()

    removed = index.prune(keep_s=-1, max_rows=RUNS, after_slice=after_slice)
    return removed, max(largest, wal_bytes(path))


def test_a_paced_prune_keeps_the_wal_small_and_copies_as_it_goes(
    settled_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same pass unpaced (on a copy of the file) grows the WAL many times larger:
    the bound below is what the pacing buys, not a property of the data."""
    unpaced_path = settled_index.with_name("unpaced.sqlite")
    unpaced_path.write_bytes(settled_index.read_bytes())
    unpaced = pruner_index(unpaced_path)
    try:
        removed, unpaced_wal = prune_all(unpaced, None, unpaced_path)
    finally:
        unpaced.close()
    assert removed == RUNS

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    flushed: list[str] = []
    real_flush = db_flush._fdatasync
    monkeypatch.setattr(
        db_flush,
        "_fdatasync",
        lambda fd: flushed.append(os.readlink(f"/proc/self/fd/{fd}")) or real_flush(fd),
    )
    rests: list[float] = []
    index, flush = pruner_index(settled_index), DatabaseFlush(settled_index)
    try:
        pacer = PrunePacer(index, flush, sleep=rests.append)
        removed, paced_wal = prune_all(index, pacer, settled_index)
        assert pacer.finish()  # nothing else writes: every frame copied
        assert index.known_count() == 0
    finally:
        index.close()
        flush.close()
    assert removed == RUNS
    slices = -(-RUNS // PRUNE_SLICE_ROWS)
    assert pacer.write_outs == (slices - 1) // 2 + 1  # every two full slices, and finish
    assert len(rests) == pacer.write_outs - 1
    assert all(0 <= rest <= MAX_REST_S for rest in rests)
    assert synced.count(f"{settled_index}-wal") == pacer.write_outs
    assert flushed.count(str(settled_index)) == pacer.write_outs
    assert paced_wal * 4 < unpaced_wal, (paced_wal, unpaced_wal)


def test_a_stop_ends_the_pass_after_the_slice_just_committed(settled_index: Path) -> None:
    stopping = threading.Event()
    index = pruner_index(settled_index)
    try:
        pacer = PrunePacer(index, None, stopping=stopping, sleep=lambda _: None)

        def after_slice() -> None:
            if pacer.slices == 2:
                stopping.set()
            pacer.after_slice()

        with pytest.raises(PruneStopped):
            index.prune(keep_s=-1, max_rows=RUNS, after_slice=after_slice)
        assert pacer.slices == 3
        assert index.known_count() == RUNS - 3 * PRUNE_SLICE_ROWS  # committed, kept so
    finally:
        index.close()


def test_after_a_failed_flush_the_wal_is_still_synced_but_nothing_more_is_copied(
    settled_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(db_flush, "_fdatasync", failing)
    index, flush = pruner_index(settled_index), DatabaseFlush(settled_index)
    copies: list[bool] = []
    real_copy = index.copy_wal
    monkeypatch.setattr(index, "copy_wal", lambda: copies.append(True) or real_copy())
    try:
        pacer = PrunePacer(index, flush, sleep=lambda _: None)
        with pytest.raises(OSError, match="Input/output error"):  # the pass fails, logged
            index.prune(keep_s=-1, max_rows=RUNS, after_slice=pacer.after_slice)
        assert flush.failed
        assert copies == [True]
        synced_before = pacer.write_outs
        pacer = PrunePacer(index, flush, sleep=lambda _: None)  # the next pass
        index.prune(keep_s=-1, max_rows=RUNS, after_slice=pacer.after_slice)
        pacer.finish()
        assert pacer.write_outs > synced_before
        assert copies == [True], "copied after the failed flush"
        assert index.known_count() == 0
    finally:
        index.close()
        flush.close()


async def test_the_pruner_runs_paced_passes_and_its_close_waits_for_the_pass(
    settled_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass under way when spoold stops ends between two slices; only then is the
    connection closed (closing it under the pass's thread would fail that thread)."""
    monkeypatch.setattr(index_pruner, "PRUNE_EVERY_S", 0.01)
    in_pass, release = threading.Event(), threading.Event()
    real_sync = RunsIndex.sync

    def slow_sync(self: RunsIndex) -> None:  # a slow disk: each write-out waits
        in_pass.set()
        release.wait(5)
        real_sync(self)

    monkeypatch.setattr(RunsIndex, "sync", slow_sync)
    index, flush = pruner_index(settled_index), DatabaseFlush(settled_index)
    closed: list[bool] = []
    real_close = index.close
    monkeypatch.setattr(index, "close", lambda: closed.append(True) or real_close())
    pruner = IndexPruner(index, flush, retention_s=-1, max_bytes=1 << 30)
    task = asyncio.create_task(pruner.run())
    try:
        assert await asyncio.to_thread(in_pass.wait, 10), "no pass began"
        closing = asyncio.create_task(pruner.close(task, timeout_s=5))
        await asyncio.sleep(0.2)
        assert closed == [], "closed under a running pass"
        release.set()
        assert await asyncio.wait_for(closing, 10) is True
    finally:
        release.set()
        flush.close()
    assert closed == [True]
    assert task.done()
    reopened = RunsIndex(settled_index)
    try:
        left = reopened.known_count()
    finally:
        reopened.close()
    assert 0 < left < RUNS  # stopped part-way: forgotten slices stay forgotten


async def test_a_pass_stuck_past_the_timeout_leaves_the_connection_open(
    settled_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_pruner, "PRUNE_EVERY_S", 0.01)
    in_pass, release = threading.Event(), threading.Event()
    real_sync = RunsIndex.sync

    def stuck_sync(self: RunsIndex) -> None:
        in_pass.set()
        release.wait(10)
        real_sync(self)

    monkeypatch.setattr(RunsIndex, "sync", stuck_sync)
    index = pruner_index(settled_index)
    pruner = IndexPruner(index, None, retention_s=-1, max_bytes=1 << 30)
    task = asyncio.create_task(pruner.run())
    try:
        assert await asyncio.to_thread(in_pass.wait, 10), "no pass began"
        assert await pruner.close(task, timeout_s=0.2) is False
        assert index.known_count() < RUNS  # the connection still works
    finally:
        release.set()
        for _ in range(100):  # the pass ends at its next slice: at most 10 s
            if pruner._idle.is_set():
                break
            await asyncio.sleep(0.1)
        index.close()
