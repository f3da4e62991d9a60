"""The accept path: classify each write against the runs index and spool it durably.

One thread owns the index's write connection and the spool's write side. It
takes every operation waiting (plus those arriving within the group window),
classifies them (created / duplicate / accepted / unknown), appends the ones
to forward as ONE spool item — one commit, one fsync — then commits the index
and answers every waiting request together. A 2xx is therefore only ever sent
for an operation that is on disk. The thread never talks to the network.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from spoold.runs_index import Outcome, RunsIndex
from spoold.spool import Spool, SpoolClosedError, SpoolError, SpoolWriteError
from spoold.spool.codec import encode_op

log = structlog.get_logger("spoold.accept")
_STOP = object()


@dataclass(frozen=True)
class Accepted:
    outcome: Outcome
    run_id: str | None


@dataclass
class _Pending:
    op: dict[str, Any]
    encoded: bytes
    verified: bool
    future: asyncio.Future[Accepted]
    loop: asyncio.AbstractEventLoop


@dataclass
class AcceptStats:
    groups: int = 0
    operations: int = 0
    duplicates: int = 0
    rejected_full: int = 0
    rejected_error: int = 0
    last_commit_s: float = 0.0


def _settle(item: _Pending, result: Accepted | None, error: BaseException | None) -> None:
    def apply() -> None:
        if item.future.done():
            return
        if result is not None:
            item.future.set_result(result)
        else:
            item.future.set_exception(error or SpoolWriteError("not accepted"))

    item.loop.call_soon_threadsafe(apply)


class Acceptor:
    """``await acceptor.submit(op)`` returns once op is durable (or refused)."""

    def __init__(
        self,
        spool: Spool,
        index: RunsIndex,
        *,
        window_s: float = 0.002,
        max_group: int = 512,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self._spool = spool
        self._on_commit = on_commit
        self._index = index
        self._window_s = window_s
        self._max_group = max_group
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="spoold-accept", daemon=True)
        self._closed = False
        self.stats = AcceptStats()

    def start(self) -> None:
        self._thread.start()

    async def submit(self, op: dict[str, Any], *, verified: bool = False) -> Accepted:
        if self._closed:
            raise SpoolClosedError("spoold is shutting down")
        encoded = encode_op(op)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        self._queue.put(_Pending(op, encoded, verified, future, loop))
        return await asyncio.shield(future)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Answer everything already submitted, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout_s)

    # ---- the accept thread ----------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            group = [first]
            deadline = time.monotonic() + self._window_s
            while len(group) < self._max_group:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                group.append(item)
            self._commit(group)

    def _commit(self, group: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results, to_spool = self._classify(group)
            self._spool.check_capacity(sum(len(item.encoded) for item in to_spool) + 64)
            self._spool.put_encoded([item.encoded for item in to_spool])
            self._index.commit()
        except SpoolError as exc:
            self._index.rollback()
            self._refuse(group, exc)
            return
        except Exception as exc:  # index trouble: nothing was promised yet
            self._index.rollback()
            log.error("accept_failed", error=str(exc), operations=len(group))
            self._refuse(group, SpoolWriteError(f"local state write failed: {type(exc).__name__}"))
            return
        self.stats.groups += 1
        self.stats.operations += len(to_spool)
        self.stats.duplicates += sum(1 for result in results if result.outcome == "duplicate")
        self.stats.last_commit_s = time.perf_counter() - started
        if self._on_commit is not None and to_spool:
            self._on_commit(len(to_spool), self.stats.last_commit_s)
        for item, result in zip(group, results, strict=True):
            _settle(item, result, None)

    def _classify(self, group: list[_Pending]) -> tuple[list[Accepted], list[_Pending]]:
        self._index.begin()
        results: list[Accepted] = []
        to_spool: list[_Pending] = []
        for item in group:
            outcome, run_id = self._index.record(item.op, verified=item.verified)
            results.append(Accepted(outcome, run_id))
            if outcome in ("created", "accepted"):
                to_spool.append(item)
        self._index.add_counter("accepted", len(to_spool))
        self._index.add_counter("duplicates", sum(1 for r in results if r.outcome == "duplicate"))
        return results, to_spool

    def _refuse(self, group: list[_Pending], error: SpoolError) -> None:
        if isinstance(error, SpoolWriteError):
            self.stats.rejected_error += len(group)
            log.warning("accept_refused", error=str(error), operations=len(group))
        else:
            self.stats.rejected_full += len(group)
        for item in group:
            _settle(item, None, error)
