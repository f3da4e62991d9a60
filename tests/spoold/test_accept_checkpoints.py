"""The runs index's WAL is checkpointed on a thread of its own, never inside an accept commit.

SQLite's auto-checkpoint runs inside whichever commit crosses its mark (1000 pages):
the accept thread then copied ~4 MiB into the database file and fsync'd it before it
could answer its group (commits of 25-60 ms among ~0.2 ms ones). The accept
connection has auto-checkpoint off and a checkpointer thread keeps the WAL bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory

from spoold.accept.acceptor import INDEX_RESTART_FRAMES, Acceptor
from spoold.spool import checkpoint
from spoold.spool.checkpoint import WalCheckpointer
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex

#: The WAL of a run of creates: it starts over near INDEX_RESTART_FRAMES pages.
WAL_BOUND = int(INDEX_RESTART_FRAMES * 4096 * 1.5)


def create(name: str) -> dict[str, Any]:
    body = {"event_id": name, "run_id": f"r-{name}", "output_summary": "x" * 400}
    return {"kind": "create", "event_id": name, "body": body}


def file_bytes(path: Path) -> int:
    return path.stat().st_size


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "index-checkpoint"]


async def test_accept_commits_do_not_checkpoint_and_the_wal_stays_bounded(
    tmp_path: Path, make_spool: SpoolFactory
) -> None:
    path = tmp_path / "index.sqlite"
    spool, index = make_spool(), RunsIndex(path)
    acceptor = Acceptor(spool, index, Ledger(), checkpoint_every_bytes=256 * 1024)
    acceptor.start()
    try:
        assert index.wal_autocheckpoint() == 0  # no checkpoint inside an accept commit
        assert len(checkpoint_threads()) == 1
        for start in range(0, 6000, 200):  # ~30 groups, ~24 MiB of WAL if never checkpointed
            await asyncio.gather(
                *(acceptor.submit(create(f"e{i}")) for i in range(start, start + 200))
            )
        wal = Path(f"{path}-wal")
        for _ in range(500):  # the last checkpoint may still run: at most 5 s
            if file_bytes(wal) <= WAL_BOUND:
                break
            await asyncio.sleep(0.01)
        assert file_bytes(wal) <= WAL_BOUND
        assert file_bytes(path) > 1024 * 1024  # the pages reached the database file
    finally:
        await acceptor.close()
    assert checkpoint_threads() == []
    assert index.known_count() == 6000
    assert spool.stats().depth_ops == 6000
    index.close()


async def test_without_a_checkpointer_the_connection_keeps_sqlite_auto_checkpoint(
    tmp_path: Path, make_spool: SpoolFactory
) -> None:
    """Offline users of the index (replay, recovery) keep SQLite's own checkpoints."""
    index = RunsIndex(tmp_path / "index.sqlite")
    acceptor = Acceptor(make_spool(), index, Ledger(), checkpoint_every_bytes=None)
    acceptor.start()
    await acceptor.submit(create("one"))
    await acceptor.close()
    assert index.wal_autocheckpoint() == 1000
    index.close()


async def test_under_writes_that_never_pause_the_wal_still_starts_over(
    tmp_path: Path, make_spool: SpoolFactory
) -> None:
    """SQLite starts a WAL over only when a write begins with every frame copied; under
    writes that never pause, the checkpointer's copy always trails the last commits, so
    the WAL grew for as long as agents wrote, and the commit that finally restarted it
    truncated all of it to ``journal_size_limit`` on the accept thread (a commit of 240
    ms, 150 ms of it CPU, in ``bench/spoold_accept.py``; here, before the fix, the WAL
    reached 72 MB within these 48,000 creates). The accept thread now
    copies the few frames left between two groups once the WAL holds
    ``INDEX_RESTART_FRAMES``: the WAL stays near that size, whatever the load."""
    path = tmp_path / "index.sqlite"
    spool, index = make_spool(), RunsIndex(path)
    acceptor = Acceptor(spool, index, Ledger())  # checkpoints every 4 MiB, as spoold
    acceptor.start()
    wal = Path(f"{path}-wal")
    sizes: list[int] = []
    total, writers = 48_000, 48

    async def writer(k: int) -> None:
        for i in range(k, total, writers):
            await acceptor.submit(create(f"e{i}"))

    async def sample() -> None:
        while True:
            with contextlib.suppress(FileNotFoundError):
                sizes.append(os.stat(wal).st_size)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.wait_for(asyncio.gather(*(writer(k) for k in range(writers))), 120)
    finally:
        sampler.cancel()
        await acceptor.close()
    assert index.known_count() == total
    assert spool.stats().depth_ops == total
    bound = INDEX_RESTART_FRAMES * 4096 * 2 + 4 * 1024 * 1024  # twice the restart size + slack
    assert max(sizes) <= bound, (max(sizes), bound)
    assert acceptor.stats.wal_copies >= 1, "the WAL never started over"
    index.close()


def test_a_restart_waits_for_an_idle_writer_or_half_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Due once a pass finds the WAL long; the writer copies when idle, or when overdue
    while requests keep coming; a copy that left frames behind is retried only once
    overdue again, not at every group."""
    clock = {"now": 1000.0}
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock["now"])
    index = RunsIndex(tmp_path / "index.sqlite")
    checkpointer = WalCheckpointer(
        index.path, 1000, every_bytes=1, name="index-checkpoint", restart_frames=1
    )
    try:
        assert not checkpointer.restart_now(idle=True)  # nothing written: not due
        index.begin()
        index.record(create("one"), verified=False)
        index.commit()
        checkpointer.note_written(1)
        for _ in range(500):  # the pass runs on its thread: at most 5 s
            if checkpointer.restart_now(idle=True):
                break
            threading.Event().wait(0.01)
        assert checkpointer.restart_now(idle=True)
        assert not checkpointer.restart_now(idle=False)  # requests wait: not yet
        clock["now"] += checkpoint.RESTART_WITHIN_S
        assert checkpointer.restart_now(idle=False)  # overdue: even with requests waiting
        checkpointer.retry_later()
        assert not checkpointer.restart_now(idle=False)
        assert checkpointer.restart_now(idle=True)
        assert index.copy_wal()  # nothing else writes or reads: every frame copied
        checkpointer.restarted()
        assert not checkpointer.restart_now(idle=True)
    finally:
        checkpointer.close()
        index.close()
