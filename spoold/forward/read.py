"""The drain's read stage: rounds from the spool, in FIFO order, one round ahead of the send.

It is the only stage that takes groups from the spool, and it hands each round to the
send stage through a one-slot hand-off (``spoold.forward.handoff.Slot``): it reads the
next round only once the slot is empty, so while round N is with the server, round N+1
is read (and folded, and packed) and waits in the slot - never N+2. Rounds leave the
slot in the order they were read, which is the spool's FIFO order.

A round is bounded in operations (``batch_size``) and in spooled bytes
(``round_max_bytes``), whatever the backlog: a backlog of large operations never loads
hundreds at once. Its operations are folded into one upsert snapshot per run and packed
into batches under the server's body cap (``batch_max_bytes``; a snapshot too large
alone goes as its separate operations), encoded ahead of time.

When the spool has nothing, the stage waits for what was sent to be recorded and then
calls ``idle`` (probe the server, housekeeping, wait for a write); when it has nothing
and a stop was requested, it hands on the end of the stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from server.contract.fields import SNAPSHOT_SOURCE_PATTERN
from spoold.forward.coalesce import SOURCE_MAX_LEN, Origin, coalesce, op_sequence, pack
from spoold.forward.handoff import LocalFaults, Slot, StopClock, Stopped
from spoold.forward.presence import oldest_accepted_at
from spoold.forward.rounds import Chunk, Planned, Round, RoundOps
from spoold.spool import Spool, SpoolGroup

log = structlog.get_logger("spoold.drainer")

SOURCE_PATTERN = re.compile(SNAPSHOT_SOURCE_PATTERN)


class Downstream(Protocol):
    """What the read stage needs to know of the stages after it."""

    def sending(self) -> bool:
        """Whether the send stage holds a round now."""
        ...

    async def sent(self) -> None:
        """Until the send stage holds no round."""
        ...

    async def recorded(self) -> None:
        """Until every round handed on is recorded (settled, then acked)."""
        ...


class ReadStage:
    def __init__(
        self,
        spool: Spool,
        out: Slot[Round],
        clock: StopClock,
        faults: LocalFaults,
        downstream: Downstream,
        idle: Callable[[], Awaitable[None]],
        *,
        batch_size: int,
        batch_max_bytes: int,
        round_max_bytes: int | None = None,
        sidecar_id: str | None = None,
    ) -> None:
        self._spool = spool
        #: This sidecar's id: with the spool file's, the source of its snapshots.
        self._sidecar_id = sidecar_id
        self._out = out
        self._clock = clock
        self._faults = faults
        self._downstream = downstream
        self._idle = idle
        self._batch_size = batch_size
        self._batch_max_bytes = batch_max_bytes
        #: Spooled bytes read per round (default: one batch's worth).
        self._round_max_bytes = round_max_bytes or batch_max_bytes
        #: The read in its thread, if one is under way; kept until done, so that a
        #: cancelled stage leaves it for ``finish`` to give its groups back.
        self._reading: asyncio.Task[Round] | None = None

    async def run(self) -> None:
        """Read rounds into the slot until stopped with an empty spool (or ``Stopped``)."""
        while True:
            self._clock.check()
            await self._out.wait_empty()
            try:
                round_ = await self._read()
            except Stopped:
                raise
            except Exception as exc:
                if self._downstream.sending():
                    # A read-ahead: read again once the round in flight is sent.
                    log.warning("drain_read_ahead_failed", error=str(exc))
                    await self._downstream.sent()
                else:
                    await self._faults.failed("read", exc)
                continue
            self._faults.succeeded("read")
            if round_.groups:
                await self._out.put(round_)
            elif self._downstream.sending():
                await self._downstream.sent()  # then read what came in meanwhile
            else:
                await self._downstream.recorded()
                if self._clock.requested.is_set():
                    await self._out.put(None)  # the end: nothing is left to send
                    return
                try:
                    await self._idle()
                except Stopped:
                    raise
                except Exception as exc:  # housekeeping on a full disk, say
                    await self._faults.failed("read", exc)

    def read_round(self) -> Round:
        """Read the next groups and fold them into batches (in a thread)."""
        groups = self._spool.get_groups(self._batch_size, max_bytes=self._round_max_bytes)
        try:
            decoded = [op for group in groups for op in group.ops]
            origin = self._origin(groups)
            batches: list[Chunk] = [
                ([Planned(s.event_id, tuple(s.positions)) for s in members], body)
                for members, body in pack(
                    coalesce(decoded, origin), decoded, self._batch_max_bytes, origin
                )
            ]
            ops = RoundOps(decoded, origin)
        except BaseException:
            # Taken but never to be sent: give them back rather than strand them in flight
            # (the failure is visible on /health, and the round is read again).
            self._spool.nack(groups)
            raise
        # From here on the round holds bytes only (the groups keep their ids for the ack).
        slim: list[SpoolGroup] = [dataclasses.replace(group, ops=[]) for group in groups]
        return Round(slim, ops, batches, oldest_accepted_at(decoded))

    def _origin(self, groups: list[SpoolGroup]) -> Origin | None:
        """The round's source (this sidecar and its spool file: a replaced spool starts
        its ids again, so it is another source) and each operation's sequence."""
        spool_id = self._spool.identity
        if not spool_id:
            return None
        source = f"{self._sidecar_id}/{spool_id}" if self._sidecar_id else spool_id
        if len(source) > SOURCE_MAX_LEN or not SOURCE_PATTERN.fullmatch(source):
            return None  # not ours (a hand-edited file): unstamped, applied as before
        sequences = [
            op_sequence(group.id, index) for group in groups for index in range(len(group.ops))
        ]
        return Origin(source, sequences)

    async def _read(self) -> Round:
        task = self._reading
        if task is None:
            task = self._reading = asyncio.create_task(asyncio.to_thread(self.read_round))
        try:
            round_ = await asyncio.shield(task)
        except Exception:  # it gave its groups back itself
            self._reading = None
            raise
        # (A cancellation leaves the task here, for ``finish``.)
        self._reading = None
        return round_

    async def finish(self) -> list[SpoolGroup]:
        """Stopping: the groups of a read still under way (they go back to the spool)."""
        task, self._reading = self._reading, None
        if task is None:
            return []
        try:
            return (await task).groups
        except Exception:  # a failed read gave its groups back itself
            return []
