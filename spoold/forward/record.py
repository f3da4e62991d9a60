"""The drain's record stage: a delivered round settled in the runs index, then acked.

It holds each delivered round in its slot (``spoold.forward.handoff.Slot``) until the
round is recorded, and only then frees the slot: the send stage's next hand-off waits
for that, so rounds are recorded one at a time (the index keeps the ids of one settle
at a time), in the order they were read. Within a round, the settle comes first
(counters, per-run pending, and the groups' ids, fsync'd), then the spool ack: a crash
between the two is repaired at start-up (``spoold.state.recovery``: delivered items
are acked without being sent again).

While agents are writing, the settle goes in short slices (``SETTLE_SLICE_OPS``
operations per commit, the last one fsync'd), and the index's write gate and the
spool's put-first lock (``spoold.spool.writegate``) let a waiting accept commit go
between any two of these writes. A failed step (a full disk refusing the ack) is
retried after a backoff from where it stopped - the round is never sent again - and
the send stage waits meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from spoold.forward.handoff import ACCEPT_BUSY_S, LocalFaults, Slot, Stopped
from spoold.forward.rounds import Delivered, DrainStats
from spoold.spool import Spool
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex

#: Operations per settle transaction while the accept path is writing (each is a few ms
#: of the index's write lock; without accepts, a round settles in one transaction).
SETTLE_SLICE_OPS = 32


class RecordStage:
    def __init__(
        self,
        inbox: Slot[Delivered],
        spool: Spool,
        index: RunsIndex,
        ledger: Ledger,
        stats: DrainStats,
        faults: LocalFaults,
        *,
        on_forward: Callable[[int, float], None] | None = None,
    ) -> None:
        self._in = inbox
        self._spool = spool
        self._index = index
        self._ledger = ledger
        self._stats = stats
        self._faults = faults
        self._on_forward = on_forward
        #: The record in its thread, if one is under way; kept until done, so that a
        #: cancelled stage never lets a second record of the round start beside it.
        self._recording: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Record delivered rounds, in order, until the end of the stream (or ``Stopped``)."""
        while True:
            delivered = await self._in.hold()
            if delivered is None:
                self._in.release()
                return
            while True:
                try:
                    await self._record_in_thread(delivered)
                    break
                except Stopped:
                    raise
                except Exception as exc:
                    await self._faults.failed("record", exc)
            self._faults.succeeded("record")
            self._in.release()

    def record(self, delivered: Delivered) -> None:
        """Settle a delivered round in the index, then ack it in the spool (in a thread).

        The settle goes in slices, each a short write transaction naming the round's
        items and how far it got; only the last is fsync'd, and the spool ack follows
        it. While the accept path is writing, slices are ``SETTLE_SLICE_OPS`` operations;
        otherwise the rest of the round goes at once. Each step runs once: if a slice or
        the ack fails, a retry goes on from there (the operations were delivered and
        counted, they are never sent again).
        """
        while not delivered.settled:
            end = len(delivered.event_ids)
            if self._index.gate.urgent_within(ACCEPT_BUSY_S):
                end = min(end, delivered.done + SETTLE_SLICE_OPS)
            forwarded, dead = delivered.counts(delivered.done, end)
            last = end >= len(delivered.event_ids)
            self._index.settle_slice(forwarded, dead, delivered.mark(end), durable=last)
            delivered.done = end
            forwarded_ops, dead_ops = sum(forwarded.values()), sum(dead.values())
            self._ledger.settled(forwarded_ops, dead_ops)
            self._stats.operations_forwarded += forwarded_ops
            if last and self._on_forward is not None:
                self._on_forward(delivered.operations, time.perf_counter() - delivered.started)
        self._spool.ack(delivered.groups)

    async def _record_in_thread(self, delivered: Delivered) -> None:
        task = self._recording
        if task is None:
            task = self._recording = asyncio.create_task(asyncio.to_thread(self.record, delivered))
        try:
            await asyncio.shield(task)
        except Exception:
            self._recording = None
            raise
        # (A cancellation leaves the task here, for ``finish``.)
        self._recording = None

    async def finish(self) -> None:
        """Stopping: complete the round in the slot, if any (raises if that fails)."""
        task = self._recording
        if task is not None:  # under way when the stage was cancelled
            self._recording = None
            with contextlib.suppress(Exception):  # if it failed: again below, from where it stopped
                await task
                self._in.release()  # it completed
                return
        delivered = self._in.held
        if delivered is not None:
            await asyncio.to_thread(self.record, delivered)
            self._in.release()
