"""GroupCommitter: concurrent submits share queue items; failures reach every waiter."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import threading
import time
from collections.abc import Sequence

import pytest
from spool_helpers import SpoolFactory, all_seqs, op

from spoold.spool import GroupCommitter, SpoolClosedError, SpoolFull, SpoolWriteError


class FakeWriter:
    """A GroupWriter that records groups and can fail or block on demand."""

    def __init__(self) -> None:
        self.groups: list[list[bytes]] = []
        self.fail_with: BaseException | None = None
        self.release = threading.Event()
        self.release.set()

    def put_encoded(self, encoded_ops: Sequence[bytes]) -> None:
        assert self.release.wait(10), "test never released the writer"
        if self.fail_with is not None:
            raise self.fail_with
        self.groups.append(list(encoded_ops))

    def check_capacity(self, incoming_bytes: int) -> None:
        return None


async def test_concurrent_submits_share_queue_items(make_spool: SpoolFactory) -> None:
    """200 concurrent submits all return, written as far fewer than 200 queue items."""
    spool = make_spool()
    committer = GroupCommitter(spool, window_ms=2)
    committer.start()
    async with asyncio.timeout(10):
        await asyncio.gather(*(committer.submit(op(i)) for i in range(200)))
    await committer.close()
    stats = spool.stats()
    assert stats.depth_ops == 200
    assert stats.depth_groups == committer.groups_committed < 200
    assert sorted(all_seqs(spool)) == list(range(200))


async def test_lone_sequential_caller_does_not_wait_for_the_window() -> None:
    """With one caller at a time each op is written at once, not after window_ms."""
    writer = FakeWriter()
    committer = GroupCommitter(writer, window_ms=60_000)
    committer.start()
    async with asyncio.timeout(5):
        for i in range(3):
            await committer.submit(op(i))
    assert [len(g) for g in writer.groups] == [1, 1, 1]
    await committer.close()


async def test_ops_spread_over_the_window_share_a_group() -> None:
    """Ops arriving a few ms apart, fewer than the last group, wait for the window together."""
    writer = FakeWriter()
    committer = GroupCommitter(writer, window_ms=100)
    committer.start()
    async with asyncio.timeout(5):
        await asyncio.gather(*(committer.submit(op(i)) for i in range(4)))
        first = asyncio.create_task(committer.submit(op(10)))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, committer.submit(op(11)))
    assert [len(g) for g in writer.groups] == [4, 2]
    await committer.close()


async def test_returning_callers_flush_early() -> None:
    """Once as many ops wait as the last group held, the group is written without the window."""
    writer = FakeWriter()
    committer = GroupCommitter(writer, window_ms=60_000)
    committer.start()
    async with asyncio.timeout(5):
        for _ in range(3):
            await asyncio.gather(*(committer.submit(op(i)) for i in range(8)))
    assert [len(g) for g in writer.groups] == [8, 8, 8]
    await committer.close()


async def test_full_group_is_written_without_waiting_for_the_window() -> None:
    """max_group pending operations flush at once even with a very long window."""
    writer = FakeWriter()
    committer = GroupCommitter(writer, window_ms=60_000, max_group=8)
    committer.start()
    async with asyncio.timeout(5):
        await asyncio.gather(*(committer.submit(op(i)) for i in range(16)))
    assert [len(g) for g in writer.groups] == [8, 8]
    await committer.close()


async def test_groups_never_exceed_max_group() -> None:
    """A burst larger than max_group is split into groups of at most max_group."""
    writer = FakeWriter()
    committer = GroupCommitter(writer, window_ms=1, max_group=16)
    committer.start()
    async with asyncio.timeout(5):
        await asyncio.gather(*(committer.submit(op(i)) for i in range(100)))
    assert max(len(g) for g in writer.groups) <= 16
    assert sum(len(g) for g in writer.groups) == 100
    await committer.close()


async def test_write_error_fails_every_waiter_of_the_group() -> None:
    """An SQLite error on the group write reaches each waiter as SpoolWriteError."""
    writer = FakeWriter()
    writer.fail_with = sqlite3.OperationalError("disk I/O error")
    committer = GroupCommitter(writer, window_ms=5)
    committer.start()
    async with asyncio.timeout(5):
        results = await asyncio.gather(
            *(committer.submit(op(i)) for i in range(10)), return_exceptions=True
        )
    assert all(isinstance(r, SpoolWriteError) for r in results)
    assert len({id(r) for r in results}) == 10  # one exception object per waiter
    assert committer.ops_failed == 10
    writer.fail_with = None
    async with asyncio.timeout(5):
        await committer.submit(op(99))  # the committer survives the failure
    await committer.close()


async def test_disk_full_error_becomes_spool_full_with_retry_after() -> None:
    """ENOSPC from the write is reported to the waiters as SpoolFull with a Retry-After."""
    writer = FakeWriter()
    writer.fail_with = OSError(errno.ENOSPC, "No space left on device")
    committer = GroupCommitter(writer, window_ms=1)
    committer.start()
    async with asyncio.timeout(5):
        with pytest.raises(SpoolFull) as info:
            await committer.submit(op(1))
    assert info.value.retry_after_s > 0
    await committer.close()


async def test_unserializable_op_fails_only_its_caller() -> None:
    """A value JSON cannot hold is refused at submit, before it can poison a group."""
    writer = FakeWriter()
    committer = GroupCommitter(writer, window_ms=2)
    committer.start()
    async with asyncio.timeout(5):
        results = await asyncio.gather(
            committer.submit(op(1)), committer.submit({"bad": {1, 2}}), return_exceptions=True
        )
    assert results[0] is None
    assert isinstance(results[1], TypeError)
    assert sum(len(g) for g in writer.groups) == 1
    await committer.close()


async def test_capacity_refusal_is_immediate(make_spool: SpoolFactory) -> None:
    """Past the byte cap submit raises SpoolFull at once and nothing is written."""
    spool = make_spool(capacity_bytes=300)
    committer = GroupCommitter(spool)
    committer.start()
    async with asyncio.timeout(5):
        await committer.submit(op(1))
        with pytest.raises(SpoolFull) as info:
            await committer.submit(op(2, size=400))
    assert info.value.retry_after_s >= 1
    assert spool.stats().depth_ops == 1
    await committer.close()


async def test_close_flushes_pending_operations(make_spool: SpoolFactory) -> None:
    """Operations waiting in the window when close() starts are still committed."""
    spool = make_spool()
    committer = GroupCommitter(spool, window_ms=10_000)
    committer.start()
    tasks = [asyncio.create_task(committer.submit(op(i))) for i in range(5)]
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await committer.close()
        await asyncio.gather(*tasks)
    assert spool.stats().depth_ops == 5


async def test_submit_after_close_is_refused() -> None:
    """Once closed (or never started) the committer refuses with SpoolClosedError."""
    committer = GroupCommitter(FakeWriter())
    with pytest.raises(SpoolClosedError):
        await committer.submit(op(1))
    committer.start()
    await committer.close()
    with pytest.raises(SpoolClosedError):
        await committer.submit(op(1))


async def test_close_is_bounded_when_the_disk_hangs() -> None:
    """A write stuck in the disk cannot hold close() past its timeout; waiters get an error."""
    writer = FakeWriter()
    writer.release.clear()
    committer = GroupCommitter(writer, window_ms=0, close_timeout_s=0.2)
    committer.start()
    task = asyncio.create_task(committer.submit(op(1)))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    async with asyncio.timeout(5):
        await committer.close()
        with pytest.raises(SpoolClosedError):
            await task
    assert time.monotonic() - started < 2
    writer.release.set()


async def test_event_loop_keeps_running_during_a_slow_write() -> None:
    """The group write happens in a thread: the loop keeps serving while the disk is slow."""
    writer = FakeWriter()
    writer.release.clear()
    committer = GroupCommitter(writer, window_ms=0)
    committer.start()
    task = asyncio.create_task(committer.submit(op(1)))
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0.005)
        ticks += 1
    assert not task.done()
    assert ticks == 20
    writer.release.set()
    async with asyncio.timeout(5):
        await task
    await committer.close()


async def test_cancelled_caller_does_not_break_its_group() -> None:
    """A caller that goes away mid-window leaves the others' answers intact."""
    writer = FakeWriter()
    committer = GroupCommitter(writer, window_ms=20)
    committer.start()
    doomed = asyncio.create_task(committer.submit(op(1)))
    kept = asyncio.create_task(committer.submit(op(2)))
    await asyncio.sleep(0)
    doomed.cancel()
    async with asyncio.timeout(5):
        await kept
    assert sum(len(g) for g in writer.groups) == 2  # at-least-once: the op is still written
    await committer.close()
