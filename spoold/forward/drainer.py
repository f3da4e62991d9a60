"""The drainer: forwards the spool to the server, in FIFO order, until it has it all.

It reads groups (bounded by ``batch_size`` operations and ``round_max_bytes``
spooled bytes, whatever the backlog), folds the operations of each run into one
upsert snapshot, packs the snapshots into batches under the server's body cap
(``batch_max_bytes``; a snapshot too large alone goes as its separate
operations) and sends one batch at a time - so updates reach the server in the
order they were accepted.

Groups are acknowledged only after the server answered 2xx for every snapshot
in them, in two steps: the runs index settles them first (counters, per-run
pending, and the groups' ids), then the spool acks them - in the background,
while the next batch is with the server. While agents are writing, the settle
goes in short slices (``SETTLE_SLICE_OPS`` operations per commit, the last one
fsync'd), and the index's write gate and the spool's put-first lock
(``spoold.spool.writegate``) let a waiting accept commit go between any two of the
drainer's writes, and after each round the drain waits for its record and rests as
long as the round took (``PACE_WHILE_ACCEPTING``), so the agents' commits get the disk
and the GIL: the agent does not wait for the drain. A crash between the two is repaired
at start-up (``spoold.state.recovery``); a failed ack (full disk) is retried, never
by sending the groups again.

Only the server's own answers move the queue (``spoold.upstream.answers``).
Per-item refusals go to the dead-letter store and never block the rest; a
whole-batch refusal (the server's 413/400/422 error JSON) splits the batch until
the bad item stands alone, and a lone snapshot of several operations is re-sent
as those operations, in order: only a lone operation the server itself refuses
is dead-lettered. Everything else - including answers that are not this
server's - is retried forever with capped, jittered backoff that honours
Retry-After. Re-sending a batch whose answer was lost is harmless: the server
applies snapshots idempotently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import orjson
import structlog

from spoold.forward.coalesce import Snapshot, coalesce, encode_batch, pack
from spoold.forward.presence import Presence, oldest_accepted_at
from spoold.spool import DeadLetterStore, Spool, SpoolGroup
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex, Settling
from spoold.upstream.client import BatchAnswer, UpstreamClient
from spoold.upstream.retry import Backoff, next_wait
from spoold.upstream.status import UpstreamStatus

log = structlog.get_logger("spoold.drainer")

IDLE_POLL_S = 0.05
PROBE_EVERY_S = 5.0
#: Operations per settle transaction while the accept path is writing (each is a few ms
#: of the index's write lock; without accepts, a round settles in one transaction).
SETTLE_SLICE_OPS = 32
#: "Writing": an accept commit within this many seconds.
ACCEPT_BUSY_S = 1.0
#: While agents write, the drain rests this share of each round's time before the next
#: (it still drains faster than agents write; their commits get the disk and the GIL).
PACE_WHILE_ACCEPTING = 1.0
#: ... but never longer than this: a round that took long (retries through an outage)
#: must not hold the backlog back for as long again once the server is back.
MAX_REST_S = 1.0


class Stopped(Exception):
    """The drain deadline passed; what is in flight stays in the spool."""


@dataclass
class DrainStats:
    batches: int = 0
    operations_forwarded: int = 0
    duplicates_sent: int = 0
    dead_lettered: int = 0
    dead_lettered_by_reason: dict[str, int] = field(default_factory=dict)
    splits: int = 0
    last_batch_size: int = 0


class RoundOps(Sequence[dict[str, Any]]):
    """A round's operations, kept encoded: each is decoded again only when needed (a
    split, a dead letter). Decoded, a large body costs ~20-35 times its bytes, and a
    round is held for as long as the server takes to answer - forever while it is down,
    with the next round read ahead meanwhile (spoold runs under MemoryMax)."""

    def __init__(self, ops: Iterable[dict[str, Any]]) -> None:
        self._encoded: list[bytes] = []
        self.event_ids: list[str] = []
        for op in ops:
            self._encoded.append(orjson.dumps(op))
            self.event_ids.append(op["event_id"])

    def __len__(self) -> int:
        return len(self._encoded)

    @overload
    def __getitem__(self, position: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, position: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, position: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(position, slice):
            return [orjson.loads(encoded) for encoded in self._encoded[position]]
        op: dict[str, Any] = orjson.loads(self._encoded[position])
        return op


@dataclass(frozen=True)
class Planned:
    """A snapshot to send, by reference: its run and the round positions of the
    operations it folds (in order). Its body is the batch's, or is folded again from
    the round's operations (``snapshot``) when a refusal splits the batch."""

    event_id: str
    positions: tuple[int, ...]

    @property
    def operations(self) -> int:
        return len(self.positions)

    def snapshot(self, ops: Sequence[dict[str, Any]]) -> Snapshot:
        snapshot = Snapshot(self.event_id)
        for position in self.positions:
            snapshot.fold(ops[position], position)
        return snapshot

    def expand(self) -> list[Planned]:
        """Its operations as snapshots of their own, in the order they were accepted."""
        return [Planned(self.event_id, (position,)) for position in self.positions]


#: A batch to send: its snapshots and, when encoded ahead of time, its body.
Chunk = tuple[list[Planned], bytes | None]
#: Refused operations, by their position in the round: (reason, HTTP status).
Refusals = dict[int, tuple[str, int | None]]


@dataclass
class _Prepared:
    """A round read from the spool: its groups (their ids), their operations (encoded)
    and its batches (one snapshot per run, packed under the body cap and encoded ahead
    of time). Nothing in it is decoded: see ``RoundOps``."""

    groups: list[SpoolGroup]
    ops: RoundOps
    batches: list[Chunk]
    oldest: str | None = None  # the round's oldest accepted_at (``forward.presence``)


@dataclass
class _Delivered:
    """A round the server has answered: to settle in the index (in slices), then ack in
    the spool."""

    groups: list[SpoolGroup]
    event_ids: list[str]  # by position in the round (spool order)
    dead: frozenset[int]  # positions dead-lettered; every other one was forwarded
    started: float
    done: int = 0  # positions settled so far

    @property
    def operations(self) -> int:
        return len(self.event_ids)

    @property
    def settled(self) -> bool:
        return self.done >= len(self.event_ids)

    def mark(self, done: int) -> Settling:
        return Settling(
            [group.id for group in self.groups], self.operations, done, tuple(sorted(self.dead))
        )

    def counts(self, start: int, end: int) -> tuple[dict[str, int], dict[str, int]]:
        """(forwarded, dead-lettered) operations per event_id among positions [start, end)."""
        forwarded: dict[str, int] = {}
        dead: dict[str, int] = {}
        for position in range(start, end):
            into = dead if position in self.dead else forwarded
            event_id = self.event_ids[position]
            into[event_id] = into.get(event_id, 0) + 1
        return forwarded, dead


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
        self._on_forward = on_forward
        self._presence = presence
        self._spool = spool
        self._dead_letters = dead_letters
        self._index = index
        self._ledger = ledger
        self._client = client
        self._status = status
        self._batch_size = batch_size
        self._batch_max_bytes = batch_max_bytes
        #: Spooled bytes read per round (default: one batch's worth).
        self._round_max_bytes = round_max_bytes or batch_max_bytes
        self._backoff = backoff
        self._deadline: float | None = None
        self._stop = asyncio.Event()
        self.wakeup = asyncio.Event()
        self.stats = DrainStats()
        self.local_error: str | None = None
        self._last_probe = time.monotonic()
        self._give_back: list[SpoolGroup] = []
        self._prefetch: asyncio.Task[_Prepared] | None = None
        self._delivered: _Delivered | None = None  # answered by the server, not yet recorded
        self._recording: asyncio.Task[None] | None = None

    def stop_by(self, deadline_s: float) -> None:
        """Keep draining for at most deadline_s more seconds, then stop."""
        self._deadline = time.monotonic() + deadline_s
        self._stop.set()
        self.wakeup.set()

    async def run(self) -> None:
        """The drain loop; returns when stopped and the spool is empty or the deadline passed.

        A local failure (a full disk refusing the ack, a locked index) does not end
        it: the round's groups go back to the spool, the failure is reported on
        /health, and the loop tries again after a backoff.
        """
        failures = 0
        try:
            while True:
                try:
                    if not await self._round():
                        return
                    failures, self.local_error = 0, None
                except Stopped:
                    return
                except Exception as exc:
                    failures += 1
                    self.local_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.error("drain_round_failed", error=self.local_error, failures=failures)
                    try:
                        await self._sleep(self._backoff.delay(failures))
                    except Stopped:  # the deadline came during the backoff: a normal stop
                        return
        finally:
            await self._wind_down()

    async def _round(self) -> bool:
        """One pass: forward what is queued (or idle). False once stopped and done.

        Rounds overlap where order allows. Batches go to the server one at a
        time, in FIFO order; around them, round N+1's groups are read while
        round N's batch is with the server (``_prefetch``), and round N is
        recorded - settled in the index, then acked in the spool - while round
        N+1's batch is (``_recording``). Round N is recorded before round N+1
        settles: the index keeps the ids of one settle at a time.
        """
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        if self._give_back:  # groups a failed round could not return yet (e.g. disk full)
            await asyncio.to_thread(self._spool.nack, self._give_back)
            self._give_back = []
        prepared = await self._take()
        if not prepared.groups:
            await self._finish_recording()
            if self._stop.is_set():
                return False
            if time.monotonic() - self._last_probe > PROBE_EVERY_S:
                self._last_probe = time.monotonic()
                await self._probe()
                await asyncio.to_thread(self._spool.housekeep_when_idle)
            await self._idle()
            return True
        self._prefetch = asyncio.create_task(asyncio.to_thread(self._read_round))
        try:
            delivered = await self._forward(prepared)
            await self._finish_recording()  # the previous round's settle ids make way
        except BaseException:
            # Not settled: these groups go back and are sent again (harmless, idempotent).
            back = prepared.groups + (await self._take_prefetched()).groups
            try:
                await asyncio.to_thread(self._spool.nack, back)
            except Exception:  # retried at the start of the next round
                self._give_back = back
            raise
        self._delivered = delivered
        self._recording = asyncio.create_task(asyncio.to_thread(self._record, delivered))
        if self._index.gate.urgent_within(ACCEPT_BUSY_S):
            await self._finish_recording()
            took = time.perf_counter() - delivered.started
            await self._sleep(min(PACE_WHILE_ACCEPTING * took, MAX_REST_S))
        return True

    def _read_round(self) -> _Prepared:
        """Read the next groups and fold them into snapshots (in a thread, ahead of time)."""
        # Bounded in operations and in bytes (at most a batch's worth and the admission
        # budget, or one group): a backlog of large operations never loads hundreds at once.
        groups = self._spool.get_groups(self._batch_size, max_bytes=self._round_max_bytes)
        try:
            decoded = [op for group in groups for op in group.ops]
            batches: list[Chunk] = [
                ([Planned(s.event_id, tuple(s.positions)) for s in members], body)
                for members, body in pack(coalesce(decoded), decoded, self._batch_max_bytes)
            ]
            ops = RoundOps(decoded)
        except BaseException:
            # Taken but never to be sent: give them back rather than strand them in flight
            # (the round fails, visibly on /health, and is read again after a backoff).
            self._spool.nack(groups)
            raise
        # From here on the round holds bytes only (the groups keep their ids for the ack).
        slim: list[SpoolGroup] = [dataclasses.replace(group, ops=[]) for group in groups]
        return _Prepared(slim, ops, batches, oldest_accepted_at(decoded))

    async def _take(self) -> _Prepared:
        """This round's groups: the ones read ahead, or a fresh read."""
        if self._prefetch is not None:
            prepared = await self._take_prefetched()
            if prepared.groups:
                return prepared
        return await asyncio.to_thread(self._read_round)

    async def _take_prefetched(self) -> _Prepared:
        task = self._prefetch
        if task is None:
            return _Prepared([], RoundOps([]), [])
        try:
            # Shielded, and forgotten only once done: a cancelled round leaves the task
            # for _wind_down to give its groups back.
            return await asyncio.shield(task)
        except Exception as exc:  # a failed read-ahead is just an empty one
            log.warning("drain_read_ahead_failed", error=str(exc))
            return _Prepared([], RoundOps([]), [])
        finally:
            if task.done():
                self._prefetch = None

    def _record(self, delivered: _Delivered) -> None:
        """Settle a delivered round in the index, then ack it in the spool (in a thread).

        The settle goes in slices, each a short write transaction (the index's write
        gate lets a waiting accept commit in between), each naming the round's items
        and how far it got; only the last is fsync'd, and the spool ack follows it.
        While the accept path is writing, slices are ``SETTLE_SLICE_OPS`` operations;
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
            self.stats.operations_forwarded += forwarded_ops
            if last and self._on_forward is not None:
                self._on_forward(delivered.operations, time.perf_counter() - delivered.started)
        self._spool.ack(delivered.groups)
        self._delivered = None

    async def _finish_recording(self) -> None:
        """Wait for the previous round's record; redo what failed of it (raises if it fails).

        One record runs at a time: a task is forgotten only once done, so a wait cut
        short by cancellation never lets a second record (a second settle) start.
        """
        if self._recording is not None:
            await self._await_recording(reraise=False)  # a failure is redone just below
        if self._delivered is not None:
            self._recording = asyncio.create_task(asyncio.to_thread(self._record, self._delivered))
            await self._await_recording(reraise=True)

    async def _await_recording(self, *, reraise: bool) -> None:
        task = self._recording
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except Exception:
            if reraise:
                raise
        finally:
            if task.done():
                self._recording = None

    async def _wind_down(self) -> None:
        """Stopping: finish the last record and give read-ahead groups back (best effort;
        whatever is left comes back at the next start anyway)."""
        try:
            await self._finish_recording()
            ahead = (await self._take_prefetched()).groups
            if ahead:
                await asyncio.to_thread(self._spool.nack, ahead)
        except Exception as exc:
            log.warning("drain_wind_down_failed", error=str(exc))

    async def _idle(self) -> None:
        self.wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), IDLE_POLL_S)

    async def _probe(self) -> None:
        """Keep upstream reachability fresh while there is nothing to send."""
        try:
            reply = await self._client.probe()
        except Exception as exc:  # any failure is just "unreachable" here
            self._status.failed(str(exc)[:200], status=0)
            return
        if reply.status < 500:
            self._status.reachable = True

    # ---- one round: a set of groups ------------------------------------------------

    async def _forward(self, prepared: _Prepared) -> _Delivered:
        """Deliver the groups' operations; refused ones go to the dead-letter store."""
        started = time.perf_counter()
        groups, ops = prepared.groups, prepared.ops
        if self._presence is not None:
            self._presence.round_oldest = prepared.oldest
        try:
            refused = await self._deliver(prepared.batches, ops)
        finally:
            if self._presence is not None:
                self._presence.round_oldest = None
        if refused:
            entries = [(ops[position], *refused[position]) for position in sorted(refused)]
            await asyncio.to_thread(self._dead_letters.add_many, entries)
            self.stats.dead_lettered += len(refused)
            for _, _, status in entries:
                reason = "item_refused" if status == 422 else f"batch_refused_{status}"
                by_reason = self.stats.dead_lettered_by_reason
                by_reason[reason] = by_reason.get(reason, 0) + 1
            runs = len({ops.event_ids[position] for position in refused})
            log.warning("operations_dead_lettered", operations=len(refused), runs=runs)
        self.stats.last_batch_size = len(ops)
        return _Delivered(groups, list(ops.event_ids), frozenset(refused), started)

    async def _deliver(self, batches: list[Chunk], ops: RoundOps) -> Refusals:
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
                body = await asyncio.to_thread(_encode, chunk, ops)
                chunks[0] = (chunk, body)  # kept while the part is retried
            answer = await self._send(body, len(chunk))
            if answer.verdict == "ok":
                chunks.popleft()
                attempt = 0
                self._status.succeeded()
                self._count_answer(chunk, answer.body)
                # Last first: each goes to the front, so they are sent in batch order (a
                # run's two snapshots - patches that do not compose - stay in order).
                for index, reason in reversed(_item_errors(answer.body, len(chunk))):
                    snapshot = chunk[index]
                    if snapshot.operations > 1:  # which of its operations? ask again, one by one
                        self.stats.splits += 1
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
                self.stats.splits += 1
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
                await self._sleep(next_wait(attempt, answer.retry_after_s, self._backoff))
        return refused

    def _count_answer(self, chunk: list[Planned], body: dict[str, Any]) -> None:
        self.stats.batches += 1
        self.stats.duplicates_sent += int(body["duplicates"])

    async def _send(self, body: bytes, items: int) -> BatchAnswer:
        self._status.in_flight_batches += 1
        try:
            if self._deadline is None:
                return await self._client.send_batch(body, items)
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise Stopped
            try:
                return await asyncio.wait_for(self._client.send_batch(body, items), remaining)
            except TimeoutError as exc:
                raise Stopped from exc
        finally:
            self._status.in_flight_batches -= 1

    async def _sleep(self, seconds: float) -> None:
        """Wait before a retry; a shutdown deadline cuts the wait short."""
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= seconds:
                await asyncio.sleep(max(0.0, remaining))
                raise Stopped
            await asyncio.sleep(seconds)
            return
        # Not stopping yet: a stop request ends the wait early (then the deadline rules).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


def _encode(chunk: list[Planned], ops: Sequence[dict[str, Any]]) -> bytes:
    """The batch body of ``chunk``, folded again from the round's operations."""
    return encode_batch(planned.snapshot(ops) for planned in chunk)


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
