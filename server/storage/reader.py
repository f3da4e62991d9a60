"""Reads on their own read-only connections: a short one on the event loop, others off it.

Most reads (a page of 100 runs, a run by id) take a few tenths of a millisecond in
SQLite; handing each to a thread and back (queue, the loop's wake-up, GIL hand-offs)
added about 40 us of CPU and two context switches per read. So a read first runs on
the event loop's own connection under a budget: ``inline_budget_s`` of the loop
thread's CPU time (CPU, not wall time, so that a loaded machine preempting the loop
mid-read does not send every read to the pool), and ten times that in wall time (a
read waiting on the disk spends no CPU). SQLite's progress handler interrupts the
read once either is spent, and it starts over on the thread pool: the loop is never
held longer than that, plus one progress interval. A slow read (a deep offset, a wide
start_time window, a large page) thus costs its budget twice; a caller that names the
read's ``shape`` (what its cost depends on) pays that only once in a while, as a shape
interrupted on the loop goes straight to the pool for ``SLOW_SHAPE_MEMORY_S``, or, when
only its wall time ran out (the loop preempted on a busy machine, or a wait on the disk),
for ``LATE_SHAPE_MEMORY_S`` (``SLOW_SHAPE_MEMORY_S`` again if that happens twice within
it: a read waiting on the disk): one preemption used to send a cheap shape's reads to the
pool for ten seconds, each paying the thread hand-off (a job_type page: ~0.1 ms more CPU).

The loop's connection never waits for a lock (busy timeout 0): a read that would
wait also moves to the pool, whose connections wait up to the busy timeout. In WAL
mode readers never wait for the writer, so /health and queries answer while a write
waits. Each pool thread keeps one connection.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from server.sqlite.errors import is_busy
from server.storage.connection import classify, open_reader

T = TypeVar("T")

#: Most CPU time a read spends on the event loop before it moves to the thread pool.
INLINE_BUDGET_S = 0.002
#: Its wall-time bound, in budgets (a read waiting on the disk spends no CPU).
WALL_BUDGETS = 10
#: SQLite virtual-machine steps between two looks at the clock (about 10-50 us).
PROGRESS_STEPS = 1000
#: How long a shape of read that overran its budget goes straight to the pool.
SLOW_SHAPE_MEMORY_S = 10.0
#: ... and one whose read ran out of wall time only, within its CPU budget.
LATE_SHAPE_MEMORY_S = 1.0
#: Most shapes remembered (beyond it, the memory starts over: a bound, not an LRU).
SLOW_SHAPES_MAX = 1024


class _Deferred(Exception):
    """The inline attempt gave up (budget spent, or a lock it would wait for)."""


class Reader:
    """``await reader.run(fn)`` runs fn(conn) on a read-only connection: inline if it
    is quick, else on the pool. ``fn`` may run twice (the inline attempt, then on the
    pool), so it must only read."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int = 4,
        busy_timeout_ms: int = 2000,
        inline_budget_s: float = INLINE_BUDGET_S,
    ) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._inline_budget_s = inline_budget_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqlite-reader")
        self._inline: sqlite3.Connection | None = None
        self._inline_thread: int | None = None
        self._deadline = math.inf  # thread CPU time
        self._wall_deadline = math.inf
        self._interrupted = False
        #: Whether the last interruption spent the CPU budget (else only the wall time).
        self._over_budget = False
        #: Reads that moved to the pool after an inline attempt (for tests and profiles).
        self.deferred = 0
        #: Shapes of read that overran the budget, and until when they skip the loop.
        self._slow_until: dict[Hashable, float] = {}
        #: When each shape last ran out of wall time only (a second time soon: it is slow).
        self._late_at: dict[Hashable, float] = {}

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_reader(self._path, busy_timeout_ms=self._busy_timeout_ms)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connection())
        except sqlite3.Error as exc:
            raise classify(exc) from exc

    def _progress(self) -> int:
        if time.thread_time() <= self._deadline and time.monotonic() <= self._wall_deadline:
            return 0
        self._interrupted = True
        self._over_budget = time.thread_time() > self._deadline
        self._deadline = math.inf  # interrupt once: the read's own cleanup (COMMIT) runs
        self._wall_deadline = math.inf
        return 1

    def _inline_connection(self) -> sqlite3.Connection | None:
        """The event loop's connection (opened on first use), or None off that thread."""
        if self._inline is None:
            conn = open_reader(self._path, busy_timeout_ms=0)
            conn.set_progress_handler(self._progress, PROGRESS_STEPS)
            self._inline, self._inline_thread = conn, threading.get_ident()
        return self._inline if self._inline_thread == threading.get_ident() else None

    def _call_inline(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn on the loop's connection within the budget; _Deferred if it gave up."""
        try:
            conn = self._inline_connection()
        except sqlite3.Error as exc:  # the pool opens its own, and classifies a failure
            raise _Deferred from exc
        if conn is None:
            raise _Deferred
        self._interrupted = self._over_budget = False
        self._deadline = time.thread_time() + self._inline_budget_s
        self._wall_deadline = time.monotonic() + self._inline_budget_s * WALL_BUDGETS
        try:
            result = fn(conn)
        except sqlite3.Error as exc:
            # A read that would wait for a lock (SQLITE_BUSY, SQLITE_LOCKED) waits on the pool.
            if self._interrupted or is_busy(exc):
                raise _Deferred from exc
            raise classify(exc) from exc
        finally:
            self._deadline = self._wall_deadline = math.inf
            if conn.in_transaction:  # an interrupted read transaction ends here
                conn.rollback()
        if self._interrupted:  # fn caught the interruption itself: its answer is partial
            raise _Deferred
        return result

    async def run(self, fn: Callable[[sqlite3.Connection], T], shape: Hashable = None) -> T:
        """fn(conn); ``shape`` (optional) names what the read's cost depends on."""
        if self._inline_budget_s > 0 and not self._known_slow(shape):
            try:
                return self._call_inline(fn)
            except _Deferred:
                self.deferred += 1
                if self._interrupted and shape is not None:
                    self._remember_slow(shape, self._memory_s(shape))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, fn)

    def _known_slow(self, shape: Hashable) -> bool:
        if shape is None:
            return False
        until = self._slow_until.get(shape)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._slow_until[shape]  # its time is up: try the loop again
        return False

    def _memory_s(self, shape: Hashable) -> float:
        """How long an interrupted shape goes to the pool: long if it spent its CPU budget,
        or ran out of wall time twice within that long (it waits on the disk, as a cold
        or deep read does, rather than the loop having been preempted once)."""
        now = time.monotonic()
        if self._over_budget:
            return SLOW_SHAPE_MEMORY_S
        last = self._late_at.get(shape)
        if len(self._late_at) >= SLOW_SHAPES_MAX:
            self._late_at.clear()
        self._late_at[shape] = now
        if last is not None and now - last < SLOW_SHAPE_MEMORY_S:
            return SLOW_SHAPE_MEMORY_S
        return LATE_SHAPE_MEMORY_S

    def _remember_slow(self, shape: Hashable, memory_s: float) -> None:
        if len(self._slow_until) >= SLOW_SHAPES_MAX:
            self._slow_until.clear()
        self._slow_until[shape] = time.monotonic() + memory_s

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
