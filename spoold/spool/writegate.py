"""Write access to spoold's SQLite files shared by the accept path and the drainer,
with the accept path first (an agent waits on it; the drain may slow down).

``WriteGate`` orders the write transactions on the runs index (``spoold.state.runs_index``);
``PutFirstLock`` replaces persist-queue's transaction lock on the spool, so that a
put waiting for it goes before the drainer's next delete or clear. Without them
the drainer, releasing a lock and taking it again at once for its next group or
slice, could keep the accept thread waiting for as long as it had work.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType

import structlog

from server.sqlite.errors import coded_error

log = structlog.get_logger("spoold.spool")


class WriteGate:
    """One write transaction at a time on a file, within this process; the accept path
    first.

    SQLite's own lock makes a writer that finds the file busy sleep and poll
    (1, 2, 5, 10, 20... ms): the accept path, waiting behind a drain settle, would
    miss the moment it ends and sleep on while the drainer took the lock again.
    Here a waiter is woken the moment the holder commits, and a *yielding* writer
    (the drainer) does not start while an urgent one (the accept path) waits. SQLite's
    lock still guards against other processes (the operator command).
    """

    def __init__(self, timeout_s: float | None = 5.0) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._urgent_waiting = 0
        self._timeout_s = timeout_s
        #: monotonic time of the last urgent acquire (0: never).
        self.last_urgent = 0.0

    def acquire(self, *, urgent: bool) -> None:
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
            try:
                while self._held or (not urgent and self._urgent_waiting):
                    if deadline is None:
                        self._cond.wait()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:  # what SQLite's busy timeout would say
                        raise coded_error(
                            sqlite3.OperationalError,
                            "database is locked (write gate)",
                            sqlite3.SQLITE_BUSY,
                            "SQLITE_BUSY",
                        )
                    self._cond.wait(left)
            finally:
                if urgent:
                    self._urgent_waiting -= 1
            self._held = True
            if urgent:
                self.last_urgent = time.monotonic()

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def urgent_within(self, seconds: float) -> bool:
        """Whether the accept path wrote in the last ``seconds``."""
        return time.monotonic() - self.last_urgent < seconds


class PutFirstLock:
    """A drop-in for persist-queue's ``tran_lock`` (it only uses ``with``): writes made
    inside ``urgent()`` (the spool's puts) go before the others that wait.

    Once given the queue's connections (``relax``), the other writes (the drainer's
    deletes of delivered rows, setting an undecodable row aside, clean-up) commit with
    synchronous=NORMAL and without SQLite's auto-checkpoint: none of them has to be on
    disk at its commit (``Spool.ack`` fsyncs the WAL once after a round's deletes, and
    copies it into the database, outside this lock; a lost delete only sends a group
    again, which start-up repair recognises). So the lock is
    never held for the drainer's fsyncs or WAL copies, and a put waits only for the rows
    of a drainer's transaction to change. A put always commits FULL, with the
    connection's own auto-checkpoint: it sets them back itself if restoring them after a
    relaxed write failed.
    """

    def __init__(self) -> None:
        self.gate = WriteGate(timeout_s=None)  # persist-queue's own lock never times out
        self._local = threading.local()
        self._connections: Sequence[sqlite3.Connection] = ()
        self._strict: tuple[str, ...] = ()
        #: Whether the connections were last set relaxed, strict, or None: unknown.
        self._relaxed: bool | None = False

    def relax(self, connections: Sequence[sqlite3.Connection], autocheckpoint_pages: int) -> None:
        """Let the writes made outside ``urgent()`` on ``connections`` skip the fsync and
        the checkpoint; puts keep ``autocheckpoint_pages``."""
        self._strict = ("synchronous = FULL", f"wal_autocheckpoint = {int(autocheckpoint_pages)}")
        self._connections = connections

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        self._local.urgent = True
        try:
            yield
        finally:
            self._local.urgent = False

    def __enter__(self) -> PutFirstLock:
        urgent = bool(getattr(self._local, "urgent", False))
        self.gate.acquire(urgent=urgent)
        try:
            self._set(relaxed=not urgent)
        except BaseException:
            self.gate.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._set(relaxed=False)  # at rest, every connection is as a put needs it
        except sqlite3.Error as exc:
            # The drainer's transaction committed: failing it now would strand what it
            # did (rows deleted, their groups still counted in flight). The next put sets
            # FULL itself.
            log.warning("spool_pragma_restore_failed", error=str(exc))
        finally:
            self.gate.release()

    def _set(self, *, relaxed: bool) -> None:
        """The PRAGMAs on every connection (only ever inside the gate, between
        transactions: persist-queue commits before it releases this lock)."""
        if relaxed is self._relaxed or not self._connections:
            return
        self._relaxed = None  # until every connection has them
        pragmas = _RELAXED if relaxed else self._strict
        for conn in self._connections:
            for pragma in pragmas:
                conn.execute(f"PRAGMA {pragma}")
        self._relaxed = relaxed


_RELAXED = ("synchronous = NORMAL", "wal_autocheckpoint = 0")
