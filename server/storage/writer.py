"""The single writer: one thread owns the read-write connection and commits in groups.

Requests hand it small functions; the thread takes every function waiting in
its queue, runs them in one transaction (each inside its own SAVEPOINT, so one
failing operation does not undo its neighbours) and commits once. Under load
many requests share one fsync — group commit — with no added latency when idle.

The queue is bounded by admission control, not here: handlers await ``run`` before
they answer, and ``server.http.admission`` counts a request's body until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from server.contract.errors import ValidationFailed
from server.storage.connection import StorageUnavailable, classify

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]

log = structlog.get_logger("server.writer")
_STOP = object()


@dataclass
class _Op:
    fn: WriteFn
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


#: Called from the writer thread after each committed group: (operations, seconds).
GroupObserver = Callable[[int, float], None]


@dataclass
class WriterStats:
    groups: int = 0
    operations: int = 0
    failed_groups: int = 0


def _settle(op: _Op, result: Any, error: BaseException | None) -> None:
    def apply() -> None:
        if op.future.done():
            return
        if error is not None:
            op.future.set_exception(error)
        else:
            op.future.set_result(result)

    op.loop.call_soon_threadsafe(apply)


class Writer:
    """Owns the write connection; ``await writer.run(fn)`` returns after fn's commit."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        max_group: int = 512,
        on_group: GroupObserver | None = None,
    ) -> None:
        self._conn = conn
        self.on_group = on_group
        self._max_group = max_group
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="sqlite-writer", daemon=True)
        self._closed = False
        self.stats = WriterStats()
        self.pending = 0

    def start(self) -> None:
        self._thread.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in the writer thread inside a group transaction; raise its error if any."""
        if self._closed:
            raise StorageUnavailable("server is shutting down", retry_after_s=5)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.pending += 1
        self._queue.put(_Op(fn, future, loop))
        try:
            return await asyncio.shield(future)
        finally:
            self.pending -= 1

    async def close(self, timeout_s: float = 10.0) -> None:
        """Finish queued work, optimise and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout_s)

    # ---- writer thread --------------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            group: list[_Op] = [first]
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                group.append(item)
            self._commit(group)
        try:
            self._conn.execute("PRAGMA optimize")
        except sqlite3.Error as exc:
            log.warning("db_optimize_failed", error=str(exc))
        self._conn.close()

    def _commit(self, group: list[_Op]) -> None:
        started = time.perf_counter()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(group, exc)
            return
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            for op in group:
                conn.execute("SAVEPOINT op")
                try:
                    result = op.fn(conn)
                except sqlite3.IntegrityError as exc:
                    conn.execute("ROLLBACK TO op")
                    log.warning("db_constraint_rejected", error=str(exc))
                    outcomes.append((op, None, ValidationFailed("rejected by storage constraints")))
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:  # a bug or a domain error of this op only
                    conn.execute("ROLLBACK TO op")
                    outcomes.append((op, None, exc))
                else:
                    outcomes.append((op, result, None))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._fail(group, exc)
            return
        self.stats.groups += 1
        self.stats.operations += len(group)
        if self.on_group is not None:
            self.on_group(len(group), time.perf_counter() - started)
        for op, result, error in outcomes:
            _settle(op, result, error)

    def _fail(self, group: list[_Op], exc: sqlite3.Error) -> None:
        self.stats.failed_groups += 1
        log.warning("db_write_failed", error=str(exc), operations=len(group))
        unavailable = classify(exc)
        for op in group:
            _settle(
                op,
                None,
                StorageUnavailable(str(unavailable), retry_after_s=unavailable.retry_after_s),
            )
