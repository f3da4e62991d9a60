"""Group commit: many concurrent requests share one queue item and one fsync.

persist-queue fsyncs once per ``put``. Instead of one put per request,
``GroupCommitter`` collects the operations submitted within ``window_ms`` of
the first one waiting, writes them as one group in a dedicated writer thread -
the event loop never blocks on the disk - and only then answers every waiter.
The window is the documented durability latency (a client is still waiting
while its operation sits in it) and an upper bound: the group is written
early once ``max_group`` operations wait, or once as many wait as the previous
group held - the concurrent callers have all come back, so waiting longer
only adds latency (a lone sequential caller never waits the window). A group
is one SQLite row, so a failed write leaves nothing of it visible, and every
waiter of that group gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from spoold.spool.codec import encode_op
from spoold.spool.errors import (
    DISK_FULL_RETRY_AFTER_S,
    SpoolClosedError,
    SpoolError,
    SpoolFull,
    translate_write_error,
)

log = structlog.get_logger("spoold.committer")


class GroupWriter(Protocol):
    """What the committer needs from a spool (``Spool`` satisfies it)."""

    def put_encoded(self, encoded_ops: Sequence[bytes]) -> None: ...

    def check_capacity(self, incoming_bytes: int) -> None: ...


@dataclass(slots=True)
class _Waiter:
    data: bytes
    future: asyncio.Future[None]
    arrived: float


def _per_waiter(error: SpoolError) -> SpoolError:
    """A fresh exception per waiter (tracebacks must not pile up on a shared one)."""
    if isinstance(error, SpoolFull):
        copy: SpoolError = SpoolFull(str(error), error.retry_after_s)
    else:
        copy = type(error)(str(error))
    copy.__cause__ = error.__cause__ or error
    return copy


class GroupCommitter:
    """``await submit(op)`` returns once ``op`` is committed and fsync'd in the spool."""

    def __init__(
        self,
        spool: GroupWriter,
        *,
        window_ms: float = 2.0,
        max_group: int = 512,
        close_timeout_s: float = 10.0,
    ) -> None:
        if window_ms < 0 or max_group < 1:
            raise ValueError("window_ms must be >= 0 and max_group >= 1")
        self._spool = spool
        self._window_s = window_ms / 1000.0
        self._max_group = max_group
        self._enough = 1  # pending ops that flush early: the size of the last group
        self._close_timeout_s = close_timeout_s
        self._pending: list[_Waiter] = []
        self._pending_bytes = 0
        self._writing: list[_Waiter] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self.groups_committed = 0
        self.ops_committed = 0
        self.ops_failed = 0

    def start(self) -> None:
        """Start the background task (call from inside the running event loop)."""
        if self._task is not None:
            raise RuntimeError("GroupCommitter already started")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-writer")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-committer")
        self._task.add_done_callback(self._on_task_done)

    async def submit(self, op: dict[str, Any]) -> None:
        """Queue ``op`` durably; raises SpoolFull, SpoolWriteError or SpoolClosedError."""
        if self._task is None or self._task.done() or self._closing:
            raise SpoolClosedError("spool is not accepting operations")
        data = encode_op(op)
        self._spool.check_capacity(self._pending_bytes + len(data))
        loop = asyncio.get_running_loop()
        waiter = _Waiter(data, loop.create_future(), loop.time())
        self._pending.append(waiter)
        self._pending_bytes += len(data)
        if len(self._pending) in (1, self._enough):
            self._wake.set()
        await waiter.future

    @property
    def pending(self) -> int:
        """Operations waiting for their group to be written."""
        return len(self._pending) + len(self._writing)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self._pending[0].arrived + self._window_s - loop.time()
            if delay > 0 and len(self._pending) < self._enough and not self._closing:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()  # set when enough are pending, or on close
                continue
            await self._write(self._take_group())

    def _take_group(self) -> list[_Waiter]:
        group = self._pending[: self._max_group]
        del self._pending[: self._max_group]
        self._pending_bytes -= sum(len(w.data) for w in group)
        return group

    async def _write(self, group: list[_Waiter]) -> None:
        self._writing = group
        error: SpoolError | None = None
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._spool.put_encoded, [w.data for w in group]
            )
        except Exception as exc:  # the spool translates its own; this covers any writer
            error = translate_write_error(exc, DISK_FULL_RETRY_AFTER_S)
            if error is not exc:
                error.__cause__ = exc
        self._writing = []
        self._enough = min(len(group), self._max_group)
        if error is None:
            self.groups_committed += 1
            self.ops_committed += len(group)
            _settle(group, None)
        else:
            self.ops_failed += len(group)
            log.warning("spool_group_failed", ops=len(group), error=str(error))
            _settle(group, error)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """A committer that dies must not leave callers waiting forever."""
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("group_committer_died", error=repr(error))
        stranded = self._writing + self._pending
        self._writing, self._pending, self._pending_bytes = [], [], 0
        if stranded:
            self.ops_failed += len(stranded)
            _settle(stranded, SpoolClosedError("spool closed before the operation was committed"))

    async def close(self) -> None:
        """Stop accepting, flush what is pending, stop; bounded by ``close_timeout_s``."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._close_timeout_s)
        except TimeoutError:
            log.warning("group_committer_close_timeout", pending=self.pending)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            if self._executor is not None:
                # A write still running after the timeout finishes on its own thread.
                self._executor.shutdown(wait=False)


def _settle(group: list[_Waiter], error: SpoolError | None) -> None:
    for waiter in group:
        if waiter.future.done():  # the caller went away; its op is written regardless
            continue
        if error is None:
            waiter.future.set_result(None)
        else:
            waiter.future.set_exception(_per_waiter(error))
