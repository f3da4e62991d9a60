"""The single writer: one thread owns the read-write connection and commits in groups.

Requests hand it small functions; the thread (``server.runtime.group_commit``) takes
every function waiting, and here they run in one transaction and commit once. Should
one of them fail, the group is run again with each inside its own SAVEPOINT, so the
failing operation is undone alone and its neighbours commit (``_transaction``).
Under load many requests share one fsync — group commit — with no added latency when
idle.

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
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from server.contract.errors import ValidationFailed
from server.runtime.group_commit import Answer, GroupCommit, GroupWork
from server.storage.checkpoint import Checkpointer
from server.storage.connection import StorageUnavailable, classify

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]

log = structlog.get_logger("server.writer")

#: Seconds a client is told to wait after a group failed for an unexpected reason.
FAILED_GROUP_RETRY_S = 1.0
#: ... and once the writer thread is gone (only a restart helps).
DEAD_WRITER_RETRY_S = 30.0


@dataclass(slots=True)
class _Op:
    fn: WriteFn
    queued: float  # perf_counter() when handed to the writer


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


class Writer(GroupWork[_Op, Any]):
    """Owns the write connection; ``await writer.run(fn)`` returns after fn's commit."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        hooks: tuple[CommitHook, ...] = (),
        checkpointer: Checkpointer | None = None,
        on_group: GroupObserver | None = None,
        max_group: int = 512,
    ) -> None:
        self._worker = GroupCommit(self, name="sqlite-writer", max_group=max_group)
        self._conn = conn
        self._checkpointer = checkpointer
        self.on_group = on_group
        self._hooks = hooks
        self._commit_started = 0.0
        self.stats = WriterStats()
        self.pending = 0

    @property
    def failure(self) -> str | None:
        """Why the writer thread stopped unexpectedly (the exception's type, details are in
        the log); None while it is serving."""
        died = self._worker.died
        return None if died is None else type(died).__name__

    def start(self) -> None:
        self._worker.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in the writer thread inside a group transaction; raise its error if any."""
        future = self._worker.submit(_Op(fn, time.perf_counter()))
        self.pending += 1
        try:
            result: T = await asyncio.shield(future)
            return result
        finally:
            self.pending -= 1

    async def close(self, timeout_s: float = 10.0) -> bool:
        """Finish queued work, optimise and close the connection; whether the thread (and
        so its connection) ended within ``timeout_s``."""
        return await self._worker.close(timeout_s)

    # ---- writer thread (GroupWork) ----------------------------------------------------

    def refusal(self, died: BaseException | None) -> StorageUnavailable:
        if died is None:
            return StorageUnavailable("server is shutting down", retry_after_s=5)
        return StorageUnavailable(
            "the database writer has stopped; restart the server (see its log)",
            retry_after_s=DEAD_WRITER_RETRY_S,
        )

    def closing(self) -> StorageUnavailable:
        return self.refusal(self._worker.died)

    def died(self, error: BaseException) -> None:
        log.exception("db_writer_died", error=f"{type(error).__name__}: {error}")

    def finish(self) -> None:
        try:
            self._conn.execute("PRAGMA optimize")
        except sqlite3.Error as exc:
            log.warning("db_optimize_failed", error=str(exc))

    def exited(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def after_group(self, waiting: bool) -> None:
        checkpointer = self._checkpointer
        if checkpointer is not None and checkpointer.catch_up_now(idle=not waiting):
            checkpointer.catch_up(self._conn)  # between groups: see checkpoint

    def failed(self, group: list[_Op], error: Exception) -> StorageUnavailable:
        """An unexpected failure fails that group only (503, retry)."""
        log.exception("db_write_group_crashed", operations=len(group), error=str(error))
        self._rollback()
        self.stats.failed_groups += 1
        return StorageUnavailable(
            "write failed unexpectedly; retry", retry_after_s=FAILED_GROUP_RETRY_S
        )

    def commit(self, group: list[_Op]) -> list[Answer[Any]]:
        started = time.perf_counter()
        try:
            committed = self._transaction(group, careful=False)
            if committed is None:  # an operation failed: redo the group, isolating each
                committed = self._transaction(group, careful=True)
            if committed is None:  # the careful attempt never gives up; say so if it did
                raise RuntimeError("the careful attempt of a write group gave up")
        except sqlite3.Error as exc:
            self._rollback()
            return self._fail(group, exc)
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
        if self._checkpointer is not None:
            self._checkpointer.nudge()
        return outcomes

    def _transaction(
        self, group: list[_Op], *, careful: bool
    ) -> tuple[list[Answer[Any]], list[Callable[[], None]]] | None:
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
        outcomes: list[Answer[Any]] = []
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
                outcomes.append((None, exc))
            else:
                outcomes.append((result, None))
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

    def _fail(self, group: list[_Op], exc: sqlite3.Error) -> list[Answer[Any]]:
        self.stats.failed_groups += 1
        log.warning("db_write_failed", error=str(exc), operations=len(group))
        unavailable = classify(exc)
        error = StorageUnavailable(str(unavailable), retry_after_s=unavailable.retry_after_s)
        error.__cause__ = exc  # the HTTP layer logs which failure it was
        return [(None, error)] * len(group)
