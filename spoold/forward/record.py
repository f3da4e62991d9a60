"""The drain's record stage: a delivered round settled in the runs index, then acked.

It holds each delivered round in its slot (``spoold.forward.handoff.Slot``) until the
round is recorded, and only then frees the slot: the send stage's next hand-off waits
for that, so rounds are recorded one at a time (the index keeps the ids of one settle
at a time), in the order they were read. Within a round, the settle comes first
(counters, per-run pending, and the groups' ids; then fsync'd), then the spool ack: a crash
between the two is repaired at start-up (``spoold.state.recovery``: delivered items
are acked without being sent again).

While agents are writing, the settle goes in short slices (``SETTLE_SLICE_OPS``
operations per commit, none fsync'd: one fsync of the index's WAL follows the last,
outside the gate, then the spool ack), and the index's write gate and the
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

import structlog

from spoold.forward.handoff import ACCEPT_BUSY_S, LocalFaults, Slot, Stopped
from spoold.forward.rounds import Delivered, DrainStats
from spoold.spool import Spool
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex

log = structlog.get_logger("spoold.drainer")

#: Operations per settle transaction while the accept path is writing (each holds the
#: index's write gate ~1 ms; without accepts, a round settles in one transaction).
SETTLE_SLICE_OPS = 8
#: WAL bytes a settled run is counted for (its row rewritten: about one b-tree page).
SETTLE_WAL_BYTES_PER_OP = 4096
#: The settles' WAL is copied into the index after about this many bytes (SQLite's own
#: auto-checkpoint mark, 1000 pages).
INDEX_CHECKPOINT_BYTES = 4 * 1024 * 1024


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
        #: Bytes the settles wrote to the index's WAL since the last copy (``_checkpoint``).
        self._wal_bytes = 0
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
        items and how far it got, committed without an fsync; then one fsync of the
        index's WAL, outside its write gate (the accept path commits meanwhile), and the
        spool ack follows it. While the accept path is writing, slices are ``SETTLE_SLICE_OPS`` operations;
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
            self._index.settle_slice(forwarded, dead, delivered.mark(end), durable=False)
            delivered.done = end
            self._wal_bytes += SETTLE_WAL_BYTES_PER_OP * (len(forwarded) + len(dead) + 1)
            forwarded_ops, dead_ops = sum(forwarded.values()), sum(dead.values())
            self._ledger.settled(forwarded_ops, dead_ops)
            self._stats.operations_forwarded += forwarded_ops
            if last and self._on_forward is not None:
                self._on_forward(delivered.operations, time.perf_counter() - delivered.started)
        if not delivered.synced:  # a failed fsync is retried alone: the slices are counted
            self._index.sync()
            delivered.synced = True
        self._spool.ack(delivered.groups)
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the index's WAL into the database once the settles wrote
        ``INDEX_CHECKPOINT_BYTES`` (PASSIVE, between two rounds, no gate held: the accept
        path commits meanwhile). The drain's connection has SQLite's auto-checkpoint off
        (``spoold.state.storage``): that copy, with its two fsyncs, would run inside a
        settle's commit, holding the write gate the accept path waits on. A copy made
        here while no settle writes is complete, so the next write starts the WAL over."""
        if self._wal_bytes < INDEX_CHECKPOINT_BYTES:
            return
        try:
            complete = self._index.copy_wal()
        except Exception as exc:  # the round is recorded; the next round tries again
            log.warning("runs_index_checkpoint_failed", error=repr(exc)[:300])
            return
        if complete:  # else (an accept commit's frames, another copy): after the next round
            self._wal_bytes = 0

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
