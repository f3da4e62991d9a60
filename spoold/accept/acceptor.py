"""The accept path: classify each write against the runs index and spool it durably.

One thread (``server.runtime.group_commit``, the worker the server's writer runs on
too) owns the index's write connection and the spool's write side. It
takes every operation waiting (plus those arriving within the group window, a
few ms, cut short once as many wait as the previous group held),
classifies them (created / duplicate / accepted / unknown), appends the ones
to forward as ONE spool item — one commit, one fsync — then commits the index
and answers every waiting request together. A 2xx is therefore only ever sent
for an operation that is on disk. The thread never talks to the network.

If the index commit fails after the spool item is written (a full disk), the
operations are durable all the same: they are answered 2xx and the item is
kept as a *debt*, recorded in the index (``fold_spooled``) before any new
write is taken, retried every ``DEBT_RETRY_S`` while nothing arrives. Until
then the drainer does not see the item (``Spool.publish``), so nothing is
settled that the index does not know. A crash with a debt is repaired at
start-up (``spoold.state.recovery``).

The thread is supervised: a group that fails in any unforeseen way is answered
503 (nothing of it is promised) and the thread goes on with the next group. If
the thread dies all the same, every write waiting and every later one is
refused at once with 503 instead of hanging, and ``failure`` says why, for
/health.

The queue is bounded by admission control, not here: handlers await ``submit``
before they answer, and ``server.edge.admission`` counts a request's body until then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from server.runtime.group_commit import Answer, GroupCommit, GroupWork
from server.sqlite.errors import is_disk_full
from spoold.accept.slow_commits import SLOW_COMMIT_S, CommitTimer
from spoold.config import INDEX_BUSY_TIMEOUT_MS
from spoold.spool import Spool, SpoolClosedError, SpoolError, SpoolFull, SpoolWriteError
from spoold.spool.checkpoint import WalCheckpointer
from spoold.spool.codec import accepted_since, encode_op
from spoold.spool.errors import DISK_FULL_RETRY_AFTER_S
from spoold.state.ledger import Ledger
from spoold.state.runs_index import Outcome, RunsIndex

log = structlog.get_logger("spoold.accept")
DEBT_RETRY_S = 0.5
#: The runs index's WAL is checkpointed (off this thread) after about this many bytes of
#: commits: SQLite's own mark (1000 pages), which it would otherwise reach inside a commit.
INDEX_CHECKPOINT_BYTES = 4 * 1024 * 1024
#: Once the runs index's WAL holds this many frames (pages, ~8 MiB), this thread copies
#: the few its checkpointer has not between two groups, so the next write starts the WAL
#: over (see ``after_group``).
INDEX_RESTART_FRAMES = 2000
#: A copy of the WAL's last frames on this thread this long is logged (``after_group``).
SLOW_WAL_COPY_S = 0.025
#: WAL bytes an operation's index row change is counted for: one b-tree page (its key is
#: random, so it dirties a page of its own), plus what its snapshot adds.
_PAGE_BYTES = 4096


class AcceptStopped(SpoolWriteError):
    """The accept thread is not running (it died, or spoold is stopping): writes get 503."""


@dataclass(frozen=True)
class _Debt:
    """A spool item whose index commit failed: durable, not yet recorded or published."""

    item_id: int
    ops: list[dict[str, Any]]


@dataclass(frozen=True)
class Accepted:
    outcome: Outcome
    run_id: str | None


#: A write handed to the accept thread: (operation, its encoding, verified). A tuple, not
#: a class: one is made per write, and a tuple costs a tenth as much.
_Write = tuple[dict[str, Any], bytes, bool]


@dataclass
class AcceptStats:
    groups: int = 0
    operations: int = 0
    rejected_error: int = 0
    slow_commits: int = 0
    #: Times this thread copied every frame of the index's WAL so that it starts over,
    #: and the longest such copy (it delays the next group).
    wal_copies: int = 0
    wal_copy_max_s: float = 0.0


def _describe(error: BaseException) -> str:
    """What ended the accept thread, for /health and its refusals."""
    return f"{type(error).__name__}: {error}"[:300]


def _index_refusal(error: BaseException | None) -> SpoolError:
    """What a write is told while the runs index cannot be written."""
    if error is not None and is_disk_full(error):
        return SpoolFull(
            "the spool's disk is full (runs index)", retry_after_s=DISK_FULL_RETRY_AFTER_S
        )
    return SpoolWriteError("local state write failed; retrying")


class Acceptor(GroupWork[_Write, Accepted]):
    """``await acceptor.submit(op)`` returns once op is durable (or refused)."""

    def __init__(
        self,
        spool: Spool,
        index: RunsIndex,
        ledger: Ledger,
        *,
        window_s: float = 0.002,
        max_group: int = 512,
        on_commit: Callable[[int, float], None] | None = None,
        checkpoint_every_bytes: int | None = INDEX_CHECKPOINT_BYTES,
        slow_commit_s: float = SLOW_COMMIT_S,
    ) -> None:
        self._spool = spool
        self._on_commit = on_commit
        self._index = index
        self._ledger = ledger
        self._debt: _Debt | None = None
        self._debt_failures = 0
        self._debt_error: Exception | None = None
        self._worker = GroupCommit(
            self, name="spoold-accept", max_group=max_group, window_s=window_s
        )
        self._checkpoint_every = checkpoint_every_bytes
        self._checkpointer: WalCheckpointer | None = None
        self._timer = CommitTimer(spool, slow_commit_s)
        self.stats = AcceptStats()
        #: accepted_at of the writes submitted and not yet answered (on the event loop):
        #: they are the sidecar's before the spool has them (``oldest_pending``).
        self._pending_since: dict[str, int] = {}

    def start(self) -> None:
        """Start the thread; the runs index's checkpoints move to a thread of their own.

        With auto-checkpoint on, the commit that crossed SQLite's mark copied the WAL
        into the database and fsync'd it before the group could be answered: a pause of
        tens of ms every few thousand writes. The checkpointer thread does that instead
        (PASSIVE: it never blocks this thread's commits).
        """
        self._timer.on_loop()  # start runs on the loop
        if self._checkpoint_every is not None:
            self._index.wal_autocheckpoint(0)
            self._checkpointer = WalCheckpointer(
                self._index.path,
                INDEX_BUSY_TIMEOUT_MS,
                self._checkpoint_every,
                name="index-checkpoint",
                restart_frames=INDEX_RESTART_FRAMES,
            )
            self._timer.index_checkpoints = self._checkpointer
        self._worker.start()

    @property
    def failure(self) -> str | None:
        """Why the accept thread is gone while spoold still runs; None while it is healthy."""
        died = self._worker.died
        return None if died is None else _describe(died)

    async def submit(self, op: dict[str, Any], *, verified: bool = False) -> Accepted:
        future = self._worker.submit((op, encode_op(op), verified))
        since = op.get("accepted_at")
        pending = self._pending_since
        if isinstance(since, str):
            pending[since] = pending.get(since, 0) + 1
        # Not shielded: a caller cancelled meanwhile cancels its future, whose answer the
        # thread then skips; the write itself is committed with its group all the same.
        # A shield cost a second future and two callbacks per write.
        try:
            return await future
        finally:
            if isinstance(since, str):
                left = pending[since] - 1
                if left:
                    pending[since] = left
                else:
                    del pending[since]

    def oldest_pending(self) -> str | None:
        """The accepted_at of the oldest write on its way into the spool (submitted, not
        yet answered); None if there is none. Once answered, a write is in the spool,
        whose group time is never later (``commit``): ``X-Spoold-Queued-Since`` covers
        a write from its accepted_at on, even while a slow commit holds it."""
        return min(self._pending_since) if self._pending_since else None

    async def close(self, timeout_s: float = 10.0) -> None:
        """Answer everything already submitted, then stop the thread."""
        ended = await self._worker.close(timeout_s)
        if self._checkpointer is not None and ended:
            checkpointer, self._checkpointer = self._checkpointer, None
            await asyncio.get_running_loop().run_in_executor(None, checkpointer.close)

    # ---- the accept thread (GroupWork) ------------------------------------------------

    def closing(self) -> SpoolClosedError:
        return SpoolClosedError("spoold is shutting down")

    def refusal(self, died: BaseException | None) -> AcceptStopped:
        if died is None:
            return AcceptStopped("spoold is shutting down")
        return AcceptStopped(f"accept thread stopped ({_describe(died)}); restart spoold")

    def died(self, error: BaseException) -> None:
        log.critical("accept_thread_died", error=_describe(error))

    def started(self) -> None:
        self._timer.on_thread()

    def exited(self) -> None:
        self._timer.close()

    def wait_s(self) -> float | None:
        return DEBT_RETRY_S if self._debt else None

    def idle(self) -> None:
        self._settle_debt()

    def finish(self) -> None:
        self._settle_debt()

    def after_group(self, waiting: bool) -> None:
        """Between two groups: once the index's WAL is long, copy its last frames here
        (see ``spoold.spool.checkpoint``), so that the next commit starts it over."""
        checkpointer = self._checkpointer
        if checkpointer is None or not checkpointer.restart_now(idle=not waiting):
            return
        started = time.perf_counter()
        try:
            complete = self._index.copy_wal()
        except Exception as exc:  # the commits are durable: this only bounds the WAL
            log.warning("index_wal_copy_failed", error=repr(exc)[:300])
            complete = False
        seconds = time.perf_counter() - started
        self.stats.wal_copy_max_s = max(self.stats.wal_copy_max_s, seconds)
        if seconds >= SLOW_WAL_COPY_S:
            log.warning("index_wal_copy_slow", ms=round(seconds * 1000, 1), complete=complete)
        if complete:
            checkpointer.restarted()
            self.stats.wal_copies += 1
        else:
            checkpointer.retry_later()

    def failed(self, group: list[_Write], error: Exception) -> SpoolError:
        """A group failed in an unforeseen way: nothing of it is promised, answer 503."""
        log.error("accept_group_failed", error=repr(error)[:300], operations=len(group))
        self._rollback()
        refusal = SpoolWriteError(f"local state write failed: {type(error).__name__}")
        self._refused(group, refusal)
        return refusal

    def _settle_debt(self) -> bool:
        """Record the debt in the index and publish it; False if it is still owed."""
        debt = self._debt
        if debt is None:
            return True
        try:
            self._index.fold_spooled(debt.item_id, debt.ops)
        except Exception as exc:
            self._debt_failures += 1
            if self._debt_failures in (1, 10, 100) or self._debt_failures % 1000 == 0:
                log.warning(
                    "accept_index_still_failing",
                    error=str(exc),
                    item=debt.item_id,
                    failures=self._debt_failures,
                )
            self._debt_error = exc
            return False
        self._debt_failures, self._debt_error = 0, None
        self._debt = None
        self._ledger.accepted(len(debt.ops))
        self._spool.publish(debt.item_id)
        log.info("accept_index_caught_up", item=debt.item_id, operations=len(debt.ops))
        return True

    def commit(self, group: list[_Write]) -> list[Answer[Accepted]]:
        started = time.perf_counter()
        if not self._settle_debt():
            return self._refused(group, _index_refusal(self._debt_error))
        item_id = 0
        clocks = self._timer.clocks()
        try:
            results, to_spool = self._classify(group)
            classified = time.perf_counter()
            self._spool.check_capacity(sum(len(encoded) for _, encoded, _ in to_spool) + 64)
            item_id = self._spool.put_encoded(
                [encoded for _, encoded, _ in to_spool],
                publish=False,
                accepted_since=accepted_since(op for op, _, _ in to_spool),
            )
            put = time.perf_counter()
            if item_id:
                self._index.mark_spooled(item_id)
            self._index.commit()
            if self._timer.attribute(started, classified, put, clocks, len(group)):
                self.stats.slow_commits += 1
        except SpoolError as exc:
            self._rollback()
            return self._refused(group, exc)
        except Exception as exc:  # index trouble
            self._rollback()
            if not item_id:  # nothing was spooled, nothing promised
                log.error("accept_failed", error=str(exc), operations=len(group))
                return self._refused(
                    group, SpoolWriteError(f"local state write failed: {type(exc).__name__}")
                )
            # The item is durable: answer as classified, record it in the index later.
            log.warning("accept_index_behind", error=str(exc), item=item_id)
            self._debt = _Debt(item_id, [op for op, _, _ in to_spool])
        if self._checkpointer is not None:
            self._checkpointer.note_written(
                sum(_PAGE_BYTES + len(encoded) for _, encoded, _ in to_spool) + 2 * _PAGE_BYTES
            )
        duplicates = sum(1 for result in results if result.outcome == "duplicate")
        self.stats.groups += 1
        self.stats.operations += len(to_spool)
        try:
            self._after_commit(item_id, len(to_spool), duplicates, time.perf_counter() - started)
        except Exception as exc:  # bookkeeping only: the group is durable, answer it as such
            log.error("accept_bookkeeping_failed", error=repr(exc)[:300], item=item_id)
        return [(result, None) for result in results]

    def _after_commit(self, item_id: int, spooled: int, duplicates: int, seconds: float) -> None:
        """Count a durable group and let the drainer see it (unless it is still a debt)."""
        try:
            if self._debt is None and (spooled or duplicates):
                self._ledger.accepted(spooled, duplicates)
        finally:
            if self._debt is None and item_id:
                self._spool.publish(item_id)
        if self._on_commit is not None and spooled:
            self._on_commit(spooled, seconds)

    def _rollback(self) -> None:
        """Undo the index transaction; a rollback that fails too must not end the thread."""
        try:
            self._index.rollback()
        except Exception as exc:
            log.error("accept_rollback_failed", error=repr(exc)[:300])

    def _classify(self, group: list[_Write]) -> tuple[list[Accepted], list[_Write]]:
        self._index.rollback()  # a no-op, unless an earlier rollback failed: redo it first
        waiting = time.perf_counter()
        self._index.begin()  # waits for the index's write gate (a drain settle slice)
        self._timer.index_wait_s = time.perf_counter() - waiting
        results: list[Accepted] = []
        to_spool: list[_Write] = []
        recorded = self._index.record_group([(op, verified) for op, _, verified in group])
        for item, (outcome, run_id) in zip(group, recorded, strict=True):
            results.append(Accepted(outcome, run_id))
            if outcome in ("created", "accepted"):
                to_spool.append(item)
        self._index.add_counter("accepted", len(to_spool))
        self._index.add_counter("duplicates", sum(1 for r in results if r.outcome == "duplicate"))
        return results, to_spool

    def _refused(self, group: list[_Write], error: SpoolError) -> list[Answer[Accepted]]:
        """Every write of the group is refused with error (counted and logged here)."""
        if isinstance(error, SpoolWriteError):
            self.stats.rejected_error += len(group)
            log.warning("accept_refused", error=str(error), operations=len(group))
        return [(None, error)] * len(group)
