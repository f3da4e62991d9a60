"""The single writer: one thread owns the read-write connection and commits in groups.

Requests hand it small functions; the thread takes every function waiting in
its queue, runs them in one transaction (each inside its own SAVEPOINT, so one
failing operation does not undo its neighbours) and commits once. Under load
many requests share one fsync — group commit — with no added latency when idle.

The thread is supervised: a group that fails in any unexpected way is rolled
back and its requests answered 503 (retry), and the next group goes on. Should
the thread die all the same, every waiting and later write is answered 503 at
once (never left hanging) and ``failure`` says why, for /health.

The queue is bounded by admission control, not here: handlers await ``run`` before
they answer, and ``server.edge.admission`` counts a request's body until then.
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
from typing import Any, Protocol, TypeVar

import structlog

from server.contract.errors import ValidationFailed
from server.storage.checkpoint import Checkpointer
from server.storage.connection import StorageUnavailable, classify

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]

log = structlog.get_logger("server.writer")
_STOP = object()

#: Seconds a client is told to wait after a group failed for an unexpected reason.
FAILED_GROUP_RETRY_S = 1.0
#: ... and once the writer thread is gone (only a restart helps).
DEAD_WRITER_RETRY_S = 30.0


@dataclass
class _Op:
    fn: WriteFn
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    queued: float = 0.0  # perf_counter() when handed to the writer


_Outcome = tuple[_Op, Any, BaseException | None]

#: Called from the writer thread after each committed group: (operations, seconds).
GroupObserver = Callable[[int, float], None]


class CommitHook(Protocol):
    """Work done at the end of every group, inside its transaction."""

    def before_commit(self, conn: sqlite3.Connection) -> Callable[[], None]:
        """Read what the group changed; return what to do once COMMIT has succeeded."""
        ...


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

    # RuntimeError: the request's loop is closed, so nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        op.loop.call_soon_threadsafe(apply)


class Writer:
    """Owns the write connection; ``await writer.run(fn)`` returns after fn's commit."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        max_group: int = 512,
        on_group: GroupObserver | None = None,
        hooks: tuple[CommitHook, ...] = (),
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._conn = conn
        self._checkpointer = checkpointer
        self.on_group = on_group
        self._hooks = hooks
        self._max_group = max_group
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="sqlite-writer", daemon=True)
        # Guards the decision "may this op still be queued?" against the thread's exit.
        self._gate = threading.Lock()
        self._closed = False
        self._failure: str | None = None
        self._current: list[_Op] = []
        self._commit_started = 0.0
        self.stats = WriterStats()
        self.pending = 0

    @property
    def failure(self) -> str | None:
        """Why the writer thread stopped unexpectedly (the exception's type, details are in
        the log); None while it is serving."""
        return self._failure

    def start(self) -> None:
        self._thread.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in the writer thread inside a group transaction; raise its error if any."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._gate:
            if self._failure is not None:
                raise _dead()
            if self._closed:
                raise StorageUnavailable("server is shutting down", retry_after_s=5)
            self._queue.put(_Op(fn, future, loop, time.perf_counter()))
        self.pending += 1
        try:
            return await asyncio.shield(future)
        finally:
            self.pending -= 1

    async def close(self, timeout_s: float = 10.0) -> None:
        """Finish queued work, optimise and close the connection."""
        with self._gate:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout_s)

    # ---- writer thread --------------------------------------------------------------

    def _main(self) -> None:
        """The thread's body: serve groups; if anything escapes, fail every waiting op."""
        try:
            self._loop()
        except BaseException as exc:
            log.exception("db_writer_died", error=f"{type(exc).__name__}: {exc}")
            with self._gate:
                self._failure = type(exc).__name__
            self._fail_ops(self._current, _dead())
        finally:
            with self._gate:
                self._closed = True
            self._drain()
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

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
            self._current = group
            self._supervised(group)
            self._current = []
            checkpointer = self._checkpointer
            if checkpointer is not None and checkpointer.catch_up_now(idle=self._queue.empty()):
                checkpointer.catch_up(self._conn)  # between groups: see checkpoint
        try:
            self._conn.execute("PRAGMA optimize")
        except sqlite3.Error as exc:
            log.warning("db_optimize_failed", error=str(exc))

    def _supervised(self, group: list[_Op]) -> None:
        """Commit one group; an unexpected failure fails that group only (503, retry)."""
        try:
            self._commit(group)
        except Exception as exc:
            log.exception("db_write_group_crashed", operations=len(group), error=str(exc))
            self._rollback()
            self.stats.failed_groups += 1
            self._fail_ops(
                group,
                StorageUnavailable(
                    "write failed unexpectedly; retry", retry_after_s=FAILED_GROUP_RETRY_S
                ),
            )

    def _commit(self, group: list[_Op]) -> None:
        started = time.perf_counter()
        try:
            committed = self._transaction(group, careful=False)
            if committed is None:  # an operation failed: redo the group, isolating each
                committed = self._transaction(group, careful=True)
            if committed is None:  # the careful attempt never gives up; say so if it did
                raise RuntimeError("the careful attempt of a write group gave up")
        except sqlite3.Error as exc:
            self._rollback()
            self._fail(group, exc)
            return
        except BaseException:
            self._rollback()
            raise
        outcomes, after_commit = committed
        for apply in after_commit:
            try:
                apply()
            except Exception as exc:  # committed already: never fail the requests for it
                log.exception("db_commit_hook_failed", error=str(exc))
        self.stats.groups += 1
        self.stats.operations += len(group)
        finished = time.perf_counter()
        self._observe(len(group), finished - started)
        log.debug(  # where a write's latency goes (TELEMETRY_LOG_LEVEL=DEBUG)
            "db_write_group",
            operations=len(group),
            waited_ms=round((started - group[0].queued) * 1000, 2),
            run_ms=round((self._commit_started - started) * 1000, 2),
            commit_ms=round((finished - self._commit_started) * 1000, 2),
        )
        for op, result, error in outcomes:
            _settle(op, result, error)
        if self._checkpointer is not None:
            self._checkpointer.nudge()

    def _transaction(
        self, group: list[_Op], *, careful: bool
    ) -> tuple[list[_Outcome], list[Callable[[], None]]] | None:
        """Run the group in one transaction and commit it; the outcomes, and the hooks'
        work to do now that it is committed.

        The first attempt runs the operations one after the other with nothing around
        them: a SAVEPOINT per operation costs two more statements (each a hand-off of the
        GIL) and a sub-journal copy of every page the operation touches. Should any
        operation fail, that attempt is rolled back whole and returns None; the careful
        attempt then wraps each operation in its own SAVEPOINT, so the failing one is
        undone alone (with whatever it half did) and its neighbours commit. Operations
        are functions of the connection only, so running one twice is safe.
        """
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[_Outcome] = []
        for op in group:
            if careful:
                conn.execute("SAVEPOINT op")
            try:
                result = op.fn(conn)
            except sqlite3.OperationalError:
                raise
            except Exception as exc:  # a constraint, a bug or a domain error of this op
                if not careful:
                    self._rollback()
                    return None
                conn.execute("ROLLBACK TO op")
                if isinstance(exc, sqlite3.IntegrityError):
                    log.warning("db_constraint_rejected", error=str(exc))
                    exc = ValidationFailed("rejected by storage constraints")
                outcomes.append((op, None, exc))
            else:
                outcomes.append((op, result, None))
            if careful:
                conn.execute("RELEASE op")
        after_commit = [hook.before_commit(conn) for hook in self._hooks]
        self._commit_started = time.perf_counter()
        conn.execute("COMMIT")
        return outcomes, after_commit

    def _observe(self, operations: int, seconds: float) -> None:
        """Tell the observer; its trouble is logged, never charged to committed writes."""
        if self.on_group is None:
            return
        try:
            self.on_group(operations, seconds)
        except Exception as exc:
            log.warning("db_write_observer_failed", error=str(exc))

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _fail(self, group: list[_Op], exc: sqlite3.Error) -> None:
        self.stats.failed_groups += 1
        log.warning("db_write_failed", error=str(exc), operations=len(group))
        unavailable = classify(exc)
        self._fail_ops(
            group, StorageUnavailable(str(unavailable), retry_after_s=unavailable.retry_after_s)
        )

    def _fail_ops(self, group: list[_Op], error: StorageUnavailable) -> None:
        for op in group:
            _settle(op, None, error)

    def _drain(self) -> None:
        """Answer every op still queued once the thread is leaving (nothing waits forever)."""
        error = (
            _dead()
            if self._failure is not None
            else StorageUnavailable("server is shutting down", retry_after_s=5)
        )
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                _settle(item, None, error)


def _dead() -> StorageUnavailable:
    return StorageUnavailable(
        "the database writer has stopped; restart the server (see its log)",
        retry_after_s=DEAD_WRITER_RETRY_S,
    )
