"""The drainer: forwards the spool to the server, in FIFO order, until it has it all.

It is a pipeline of three stages, each a task, joined by one-slot hand-offs
(``spoold.forward.handoff.Slot``)::

    spool -> read -> [round] -> send -> [delivered round] -> record -> index, then spool ack

- ``read`` (``spoold.forward.read``) takes the next round from the spool and folds it
  into batches, one round ahead of the send (the slot holds at most one);
- ``send`` (``spoold.forward.send``) delivers a round's batches one at a time, with the
  retry, split and dead-letter policy, and rests between rounds while agents write;
- ``record`` (``spoold.forward.record``) settles a delivered round in the runs index,
  then acks it in the spool, and frees its slot only then.

So the order is structural: one reader takes groups from the spool, each slot passes
rounds on in the order they entered it, and a round reaches the spool ack only through
the record stage, after its settle. Round N+1 is read while round N is with the server,
and sent while round N is recorded; it is recorded only after round N.

A stop (``stop_by``) lets the pipeline run until the spool is empty or the deadline
passes. Then what the stages hold goes back: the round being recorded is finished
(best effort), the rounds read or in flight are given back to the spool (they are sent
again after the restart: harmless, the server applies snapshots idempotently).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from spoold.forward.handoff import LocalFaults, Slot, StopClock, Stopped
from spoold.forward.presence import Presence
from spoold.forward.read import ReadStage
from spoold.forward.record import RecordStage
from spoold.forward.rounds import Delivered, DrainStats, Round
from spoold.forward.send import SendStage
from spoold.spool import DeadLetterStore, Spool, SpoolGroup
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex
from spoold.upstream.client import UpstreamClient
from spoold.upstream.retry import Backoff
from spoold.upstream.status import UpstreamStatus

log = structlog.get_logger("spoold.drainer")

IDLE_POLL_S = 0.05
PROBE_EVERY_S = 5.0


class Drainer:
    def __init__(
        self,
        spool: Spool,
        dead_letters: DeadLetterStore,
        index: RunsIndex,
        ledger: Ledger,
        client: UpstreamClient,
        status: UpstreamStatus,
        *,
        batch_size: int,
        batch_max_bytes: int,
        round_max_bytes: int | None = None,
        backoff: Backoff,
        on_forward: Callable[[int, float], None] | None = None,
        presence: Presence | None = None,
    ) -> None:
        self._spool = spool
        self._client = client
        self._status = status
        self._clock = StopClock()
        self._faults = LocalFaults(backoff, self._clock)
        self.wakeup = asyncio.Event()
        self.stats = DrainStats()
        self._last_probe = time.monotonic()
        self._to_send: Slot[Round] = Slot()
        self._to_record: Slot[Delivered] = Slot()
        self.reader = ReadStage(
            spool,
            self._to_send,
            self._clock,
            self._faults,
            self,
            self._idle,
            batch_size=batch_size,
            batch_max_bytes=batch_max_bytes,
            round_max_bytes=round_max_bytes,
            sidecar_id=None if presence is None else presence.sidecar_id,
        )
        self.sender = SendStage(
            self._to_send,
            self._to_record,
            client,
            status,
            dead_letters,
            self.stats,
            self._clock,
            self._faults,
            index.gate,
            backoff=backoff,
            presence=presence,
            backlog=spool.queued,
            round_size=(batch_size, round_max_bytes or batch_max_bytes),
        )
        self.recorder = RecordStage(
            self._to_record, spool, index, ledger, self.stats, self._faults, on_forward=on_forward
        )

    @property
    def local_error(self) -> str | None:
        """The last local failure (a full disk, a locked index), until its stage succeeds."""
        return self._faults.error

    def stop_by(self, deadline_s: float) -> None:
        """Keep draining for at most deadline_s more seconds, then stop."""
        self._clock.stop_by(deadline_s)
        self.wakeup.set()

    async def run(self) -> None:
        """Run the stages; returns when stopped and the spool is empty or the deadline passed.

        A local failure (a full disk refusing the ack, a locked index) does not end it:
        the stage that failed reports it on /health and tries again after a backoff.
        """
        stages = [
            asyncio.create_task(self.reader.run(), name="spoold-drain-read"),
            asyncio.create_task(self.sender.run(), name="spoold-drain-send"),
            asyncio.create_task(self.recorder.run(), name="spoold-drain-record"),
        ]
        try:
            done, _ = await asyncio.wait(stages, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                error = task.exception()
                if error is not None and not isinstance(error, Stopped):
                    raise error
        finally:
            for task in stages:
                task.cancel()
            await asyncio.gather(*stages, return_exceptions=True)
            await self._wind_down()

    # ---- what the read stage sees of the stages after it (``read.Downstream``) ---------

    def sending(self) -> bool:
        return self.sender.holding is not None

    async def sent(self) -> None:
        await self.sender.idle()

    async def recorded(self) -> None:
        await self.sender.idle()
        await self._to_record.wait_empty()

    # ---- idle and stop ------------------------------------------------------------------

    async def _idle(self) -> None:
        """Nothing to send: keep upstream reachability fresh, tidy up, wait for a write."""
        if time.monotonic() - self._last_probe > PROBE_EVERY_S:
            self._last_probe = time.monotonic()
            await self._probe()
            await asyncio.to_thread(self._spool.housekeep_when_idle)
        self.wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), IDLE_POLL_S)

    async def _probe(self) -> None:
        try:
            reply = await self._client.probe()
        except Exception as exc:  # any failure is just "unreachable" here
            self._status.failed(str(exc)[:200], status=0)
            return
        if reply.status < 500:
            self._status.reachable = True

    async def _wind_down(self) -> None:
        """Stopping: finish the round being recorded, give back the rounds read or in
        flight (best effort; whatever is left comes back at the next start anyway)."""
        try:
            await self.recorder.finish()
        except Exception as exc:
            log.warning("drain_wind_down_failed", error=str(exc))
        back: list[SpoolGroup] = []
        for held in (self.sender.holding, self._to_send.held):
            if held is not None:
                back.extend(held.groups)
        self.sender.holding = None
        self._to_send.release()
        try:
            back.extend(await self.reader.finish())
            if back:
                await asyncio.to_thread(self._spool.nack, back)
        except Exception as exc:
            log.warning("drain_wind_down_failed", error=str(exc))
