"""The drain's send stage: each round to the server, one batch at a time, in FIFO order.

It takes rounds from the read stage's slot and hands each delivered round to the record
stage's slot (``spoold.forward.handoff.Slot``), which the record stage frees only once
that round is settled and acked: so round N+1 is sent while round N is recorded, but
round N+1 is handed on only after round N is recorded - rounds are recorded in the order
they were read. The stage holds one round at a time, and never gives it back while
running: a local failure (the dead-letter store) sends the same round again after a
backoff, so nothing read later can overtake it.

Only the server's own answers move the queue (``spoold.upstream.answers``). Per-item
refusals go to the dead-letter store and never block the rest; a whole-batch refusal
(the server's 413/400/422 error JSON) splits the batch until the bad item stands alone,
and a lone snapshot of several operations is re-sent as those operations, in order:
only a lone operation the server itself refuses is dead-lettered. Everything else -
including answers that are not this server's - is retried forever with capped, jittered
backoff that honours Retry-After. Re-sending a batch whose answer was lost is harmless:
the server applies snapshots idempotently.

While agents are writing, after handing a round on the stage waits for its record and
rests as long as the round took (``PACE_WHILE_ACCEPTING``, at most ``MAX_REST_S``), so
the agents' commits get the disk and the GIL: the agent does not wait for the drain.
It rests only while that pace keeps up: when the spool holds more than a round after
this round's record, and more than after the last round that rested, the agents are
outrunning the rested drain (a busy host, a burst) and it goes on at once, until the
backlog is back down to that depth - a backlog that grows for good would fill the disk,
which no latency gain is worth. (Compared with the round before instead, rested and
unrested rounds would alternate at ~2/3 of the full pace: agents between that and the
full pace would grow the backlog for good.)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from spoold.forward.handoff import ACCEPT_BUSY_S, LocalFaults, Slot, StopClock, Stopped
from spoold.forward.presence import Presence
from spoold.forward.rounds import Chunk, Delivered, DrainStats, Refusals, Round, encode_chunk
from spoold.spool import DeadLetterStore
from spoold.spool.writegate import WriteGate
from spoold.upstream.client import BatchAnswer, UpstreamClient
from spoold.upstream.retry import Backoff, next_wait
from spoold.upstream.status import UpstreamStatus

log = structlog.get_logger("spoold.drainer")

#: While agents write, the drain rests this share of each round's time before the next
#: (it still drains faster than agents write; their commits get the disk and the GIL).
#: 2.0 was tried (2026-12-05, ``bench/spoold_bench.py --rows 1000000``, two runs each):
#: accept p50 3.3-3.5 -> 2.4-2.8 ms, p99 within its run-to-run spread, the drain while
#: agents write 17-27% slower; a footprint soak on a busy host then fell behind its
#: offered load. Not worth the headroom.
PACE_WHILE_ACCEPTING = 1.0
#: ... but never longer than this: a round that took long (retries through an outage)
#: must not hold the backlog back for as long again once the server is back.
MAX_REST_S = 1.0


class SendStage:
    def __init__(
        self,
        inbox: Slot[Round],
        out: Slot[Delivered],
        client: UpstreamClient,
        status: UpstreamStatus,
        dead_letters: DeadLetterStore,
        stats: DrainStats,
        clock: StopClock,
        faults: LocalFaults,
        gate: WriteGate,
        *,
        backoff: Backoff,
        presence: Presence | None = None,
        backlog: Callable[[], tuple[int, int]] | None = None,
        round_size: tuple[int, int] = (0, 0),
    ) -> None:
        self._in = inbox
        self._out = out
        self._client = client
        self._status = status
        self._dead_letters = dead_letters
        self._stats = stats
        self._clock = clock
        self._faults = faults
        self._gate = gate
        self._backoff = backoff
        self._presence = presence
        #: What the spool holds (operations, bytes), read after each round's record; at
        #: most a round (``round_size``: one round takes it all) is caught up, whatever
        #: the trend.
        self._backlog = backlog
        self._round_size = round_size
        #: The depth after the last round that rested (None: none yet in this busy spell).
        self._rested_at: int | None = None
        #: The round in hand (read, not yet handed on): given back if the drain stops.
        self.holding: Round | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        """Send rounds until the end of the stream (or ``Stopped``)."""
        while True:
            round_ = await self._in.take()
            if round_ is None:
                await self._out.put(None)
                return
            self.holding = round_
            self._idle.clear()
            delivered = await self._until_delivered(round_)
            await self._out.put(delivered)  # once the previous round is recorded
            self.holding = None
            self._idle.set()
            if self._gate.urgent_within(ACCEPT_BUSY_S):
                await self._out.wait_empty()  # this round recorded
                took = time.perf_counter() - delivered.started
                if self._keeping_up():
                    await self._clock.sleep(min(PACE_WHILE_ACCEPTING * took, MAX_REST_S))
                else:
                    self._stats.rests_skipped += 1
            else:
                self._rested_at = None  # nobody writing: a new comparison later

    def _keeping_up(self) -> bool:
        """Whether the rested drain keeps up: the spool holds at most a round, or no more
        than after the last round that rested (the first round of a busy spell rests)."""
        if self._backlog is None:
            return True
        ops, nbytes = self._backlog()
        max_ops, max_bytes = self._round_size
        caught_up = ops <= max_ops and nbytes <= max_bytes
        if caught_up or self._rested_at is None or ops <= self._rested_at:
            self._rested_at = ops
            return True
        return False

    async def _until_delivered(self, round_: Round) -> Delivered:
        while True:
            try:
                delivered = await self.forward(round_)
            except Stopped:
                raise
            except Exception as exc:  # local: sent again after a backoff (harmless)
                await self._faults.failed("send", exc)
                continue
            self._faults.succeeded("send")
            return delivered

    async def forward(self, round_: Round) -> Delivered:
        """Deliver the round's operations; refused ones go to the dead-letter store."""
        started = time.perf_counter()
        ops = round_.ops
        if self._presence is not None:
            self._presence.round_oldest = round_.oldest
        try:
            refused = await self.deliver(list(round_.batches), ops)
        finally:
            if self._presence is not None:
                self._presence.round_oldest = None
        if refused:
            entries = [(ops[position], *refused[position]) for position in sorted(refused)]
            await asyncio.to_thread(self._dead_letters.add_many, entries)
            self._stats.dead_lettered += len(refused)
            for _, _, status in entries:
                reason = "item_refused" if status == 422 else f"batch_refused_{status}"
                by_reason = self._stats.dead_lettered_by_reason
                by_reason[reason] = by_reason.get(reason, 0) + 1
            runs = len({ops.event_ids[position] for position in refused})
            log.warning("operations_dead_lettered", operations=len(refused), runs=runs)
        self._stats.last_batch_size = len(ops)
        return Delivered(round_.groups, list(ops.event_ids), frozenset(refused), started)

    async def deliver(self, batches: list[Chunk], ops: Sequence[dict[str, Any]]) -> Refusals:
        """Send until the server has every operation; return the refused ones by position.

        A batch the server refuses whole is halved; a lone snapshot of several
        operations it refuses (whole, or as an item) is re-sent as those operations,
        in order, before anything later; a lone operation it refuses is dead-lettered.
        """
        refused: Refusals = {}
        chunks: deque[Chunk] = deque(batches)
        attempt = 0
        while chunks:
            chunk, body = chunks[0]
            if body is None:  # a part of a refused batch: fold its snapshots again
                body = await asyncio.to_thread(encode_chunk, chunk, ops)
                chunks[0] = (chunk, body)  # kept while the part is retried
            answer = await self._send(body, len(chunk))
            if answer.verdict == "ok":
                chunks.popleft()
                attempt = 0
                self._status.succeeded()
                self._stats.batches += 1
                self._stats.duplicates_sent += int(answer.body["duplicates"])
                # Last first: each goes to the front, so they are sent in batch order (a
                # run's two snapshots - patches that do not compose - stay in order).
                for index, reason in reversed(_item_errors(answer.body, len(chunk))):
                    snapshot = chunk[index]
                    if snapshot.operations > 1:  # which of its operations? ask again, one by one
                        self._stats.splits += 1
                        chunks.appendleft((snapshot.expand(), None))
                    else:
                        refused.update(dict.fromkeys(snapshot.positions, (reason, 422)))
            elif answer.verdict == "split":
                chunks.popleft()
                attempt = 0
                self._status.succeeded()  # the server answered; it refused the content
                if len(chunk) == 1 and chunk[0].operations == 1:
                    refused.update(dict.fromkeys(chunk[0].positions, _refusal(answer)))
                    continue
                self._stats.splits += 1
                if len(chunk) > 1:
                    middle = len(chunk) // 2
                    chunks.extendleft([(chunk[middle:], None), (chunk[:middle], None)])
                else:
                    chunks.appendleft((chunk[0].expand(), None))
            else:
                attempt += 1
                self._status.failed(
                    answer.cause,
                    status=answer.status,
                    auth=answer.verdict == "auth",
                    unexpected=answer.verdict == "unexpected",
                )
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("upstream_retry", cause=answer.cause, attempt=attempt)
                await self._clock.sleep(next_wait(attempt, answer.retry_after_s, self._backoff))
        return refused

    async def _send(self, body: bytes, items: int) -> BatchAnswer:
        self._status.in_flight_batches += 1
        try:
            return await self._clock.within(self._client.send_batch(body, items))
        finally:
            self._status.in_flight_batches -= 1


def _item_errors(body: dict[str, Any], items: int) -> list[tuple[int, str]]:
    """(index, message) of the items a batch answer refused (checked by the client)."""
    found: dict[int, str] = {}
    for error in body["errors"]:
        if 0 <= error["index"] < items:
            found.setdefault(error["index"], str(error.get("message", "refused")))
    return sorted(found.items())


def _refusal(answer: BatchAnswer) -> tuple[str, int | None]:
    detail = answer.body.get("detail") if isinstance(answer.body, dict) else None
    reason = (
        f"server refused the item ({answer.cause}): {detail}"
        if detail
        else f"server refused the item ({answer.cause})"
    )
    return reason, answer.status
