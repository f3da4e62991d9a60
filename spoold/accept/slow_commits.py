"""Why an accept commit was slow: the time of each phase and what ran meanwhile.

A write waits at least as long as its group's commit. A commit at least
``SPOOLD_SLOW_COMMIT_MS`` slow is logged (``accept_commit_slow``) with its phases (waiting
for the index's write gate, classifying, the spool put and fsync, the index commit)
and the clocks of ``spoold.pauses`` over it: garbage collection, the spool's and the
index's WAL checkpoints, the accept thread on a CPU and waiting for one, and the event
loop's thread waiting for one.
"""

from __future__ import annotations

import threading
import time

import structlog

from spoold.config import SLOW_COMMIT_MS
from spoold.pauses import GC_CLOCK, ThreadClock
from spoold.spool import Spool
from spoold.spool.checkpoint import WalCheckpointer

log = structlog.get_logger("spoold.accept")
#: A group commit at least this slow is logged (``accept_commit_slow``) with what the
#: thread was doing meanwhile: a write waiting on it waits at least that long. The
#: default; ``SPOOLD_SLOW_COMMIT_MS`` lowers it to trace a p99 (a few ms on a loaded host).
SLOW_COMMIT_S = SLOW_COMMIT_MS / 1000


class CommitTimer:
    """Reads the clocks before a commit; ``attribute`` logs the commit if it was slow."""

    def __init__(self, spool: Spool, slow_s: float = SLOW_COMMIT_S) -> None:
        self._spool = spool
        self._slow_s = slow_s
        #: The runs index's checkpointer, once the accept path has one.
        self.index_checkpoints: WalCheckpointer | None = None
        #: How long the current group waited to begin its index transaction.
        self.index_wait_s = 0.0
        #: The accept thread's and the event loop thread's schedstat clocks.
        self._thread_clock: ThreadClock | None = None
        self._loop_clock: ThreadClock | None = None

    def on_loop(self) -> None:
        """On the event loop's thread, before the accept thread starts."""
        GC_CLOCK.install()
        self._loop_clock = ThreadClock(threading.get_native_id())

    def on_thread(self) -> None:
        """First thing on the accept thread."""
        self._thread_clock = ThreadClock(threading.get_native_id())

    def close(self) -> None:
        for clock in (self._thread_clock, self._loop_clock):
            if clock is not None:
                clock.close()

    def clocks(self) -> tuple[float, ...]:
        """GC, checkpoint and thread times now (see ``spoold.pauses``)."""
        index_checkpoints = self.index_checkpoints
        idle = (0.0, 0.0)
        thread = self._thread_clock.read() if self._thread_clock is not None else idle
        loop = self._loop_clock.read() if self._loop_clock is not None else idle
        return (
            GC_CLOCK.total_s,
            self._spool.checkpoint_busy_s(),
            0.0 if index_checkpoints is None else index_checkpoints.busy.busy_s(),
            *thread,
            loop[1],
        )

    def attribute(
        self,
        started: float,
        classified: float,
        put: float,
        clocks: tuple[float, ...],
        operations: int,
    ) -> bool:
        """Log a slow commit with the time of each phase and what ran meanwhile; whether
        it was slow."""
        done = time.perf_counter()
        if done - started < self._slow_s:
            return False
        gc_s, spool_s, index_s, cpu_s, starved_s, loop_starved_s = (
            after - before for after, before in zip(self.clocks(), clocks, strict=True)
        )
        phases = {
            "index_wait": self.index_wait_s,
            "classify": classified - started - self.index_wait_s,
            "spool_put": put - classified,
            "index_commit": done - put,
        }
        log.warning(
            "accept_commit_slow",
            total_ms=round(1e3 * (done - started), 1),
            threshold_ms=round(1e3 * self._slow_s, 1),
            slowest=max(phases, key=phases.__getitem__),
            **{f"{name}_ms": round(1e3 * seconds, 1) for name, seconds in phases.items()},
            gc_ms=round(1e3 * gc_s, 1),
            spool_checkpoint_ms=round(1e3 * spool_s, 1),
            index_checkpoint_ms=round(1e3 * index_s, 1),
            # The accept thread on a CPU, and waiting for one; the event loop's thread
            # waiting for one (while it holds the GIL, this thread cannot run Python).
            thread_cpu_ms=round(1e3 * cpu_s, 1),
            thread_runqueue_ms=round(1e3 * starved_s, 1),
            loop_runqueue_ms=round(1e3 * loop_starved_s, 1),
            operations=operations,
        )
        return True
