"""What the drain's stages share: one-slot hand-offs, the stop deadline, local failures.

A ``Slot`` holds one item between two stages. Its consumer either ``take``s the item
(the slot is free at once: the producer may prepare the next one meanwhile) or
``hold``s it and ``release``s it only once done with it (the producer's next ``put``
waits until then). With one producer and one consumer per slot, items leave a slot in
the order they entered it; and at most one item waits in it, so a stage never runs
more than one item ahead of the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

import structlog

from spoold.upstream.retry import Backoff

log = structlog.get_logger("spoold.drainer")

T = TypeVar("T")


#: "Agents are writing": an accept commit within this many seconds (the record stage then
#: settles in slices, the send stage rests between rounds).
ACCEPT_BUSY_S = 1.0


class Stopped(Exception):
    """The drain deadline passed; what is in flight stays in the spool."""


class Slot(Generic[T]):
    """Room for one item (``None`` is the end of the stream) between two stages."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._full = asyncio.Event()
        self._free = asyncio.Event()
        self._free.set()

    @property
    def empty(self) -> bool:
        return self._free.is_set()

    @property
    def held(self) -> T | None:
        """The item in the slot, if any (read by the wind-down, which gives it back)."""
        return self._item

    async def put(self, item: T | None) -> None:
        """Hand ``item`` on, once the consumer is done with the previous one."""
        await self._free.wait()
        self._item = item
        self._free.clear()
        self._full.set()

    async def hold(self) -> T | None:
        """The next item, left in the slot (the producer waits) until ``release``."""
        await self._full.wait()
        return self._item

    def release(self) -> None:
        self._item = None
        self._full.clear()
        self._free.set()

    async def take(self) -> T | None:
        """The next item, out of the slot at once."""
        item = await self.hold()
        self.release()
        return item

    async def wait_empty(self) -> None:
        await self._free.wait()


class StopClock:
    """The drain's stop: requested by ``stop_by``, enforced by ``check``, ``sleep`` and
    ``within`` in every stage (each raises ``Stopped`` once the deadline has passed)."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.requested = asyncio.Event()

    def stop_by(self, deadline_s: float) -> None:
        self.deadline = time.monotonic() + deadline_s
        self.requested.set()

    def check(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise Stopped

    async def sleep(self, seconds: float) -> None:
        """Wait before a retry; a shutdown deadline cuts the wait short."""
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= seconds:
                await asyncio.sleep(max(0.0, remaining))
                raise Stopped
            await asyncio.sleep(seconds)
            return
        # Not stopping yet: a stop request ends the wait early (then the deadline rules).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.requested.wait(), seconds)

    async def within(self, call: Coroutine[Any, Any, T]) -> T:
        """``call``'s result, or ``Stopped`` if the deadline comes first (``call`` is
        then cancelled: past the deadline, a batch in flight is abandoned). A stop
        requested while ``call`` runs puts it under the deadline from then on."""
        task = asyncio.ensure_future(call)
        try:
            if self.deadline is None:
                stop = asyncio.ensure_future(self.requested.wait())
                try:
                    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
                if task.done():
                    return task.result()
            assert self.deadline is not None  # set with ``requested``
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise Stopped
            try:
                return await asyncio.wait_for(task, remaining)
            except TimeoutError as exc:
                raise Stopped from exc
        finally:
            if not task.done():
                task.cancel()


class LocalFaults:
    """Local failures (a full disk refusing an ack, a locked index): the last one is on
    /health until the stage that failed succeeds; each stage backs off on its own run of
    failures, then tries again (a stop during the backoff ends the drain: ``Stopped``)."""

    def __init__(self, backoff: Backoff, clock: StopClock) -> None:
        self._backoff = backoff
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._source: str | None = None
        self.error: str | None = None

    async def failed(self, stage: str, exc: Exception) -> None:
        failures = self._failures.get(stage, 0) + 1
        self._failures[stage] = failures
        self.error, self._source = f"{type(exc).__name__}: {exc}"[:300], stage
        log.error("drain_round_failed", error=self.error, failures=failures, stage=stage)
        await self._clock.sleep(self._backoff.delay(failures))

    def succeeded(self, stage: str) -> None:
        self._failures.pop(stage, None)
        if self._source == stage:
            self.error, self._source = None, None
