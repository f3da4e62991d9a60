"""Clocks that say what ran during a slow accept commit (see ``spoold.accept``).

Each is a cumulative busy time, read cheaply at the start and the end of a commit:
the difference is how long the thing ran *within* that commit. ``GcClock`` counts the
process's garbage collections (any thread: a collection holds the GIL, so it stalls
the accept thread too); ``BusyClock`` counts a background task such as a WAL
checkpoint, whose fsync competes with the accept path's own; ``ThreadClock`` counts a
thread's time on a CPU and waiting for one (a busy machine starving the accept thread,
or the event loop while it holds the GIL the accept thread needs).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any


class BusyClock:
    """Seconds a task has been running, summed over its runs, the current one included."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done_s = 0.0
        self._since: float | None = None

    def start(self) -> None:
        with self._lock:
            self._since = time.perf_counter()

    def stop(self) -> None:
        with self._lock:
            if self._since is not None:
                self._done_s += time.perf_counter() - self._since
                self._since = None

    def busy_s(self) -> float:
        with self._lock:
            running = 0.0 if self._since is None else time.perf_counter() - self._since
            return self._done_s + running


class GcClock:
    """Seconds this process has spent in garbage collection since ``install``.

    A ``gc.callbacks`` hook (a few hundred ns per collection). Collections never
    overlap (each holds the GIL), so one start time is enough.
    """

    def __init__(self) -> None:
        self._started = 0.0
        self.total_s = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total_s += time.perf_counter() - self._started

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)


#: The process's GC clock, installed by the first Acceptor.
GC_CLOCK = GcClock()


class ThreadClock:
    """One thread's time on a CPU and waiting for one (its run queue), from Linux's
    ``/proc/self/task/<tid>/schedstat``: a thread that waited for a CPU was starved by
    the machine, not slowed by its own work. (0, 0) where the file does not exist."""

    def __init__(self, native_id: int) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def read(self) -> tuple[float, float]:
        """(seconds on a CPU, seconds runnable but waiting for a CPU), cumulative."""
        if self._fd is None:
            return 0.0, 0.0
        try:
            fields = os.pread(self._fd, 64, 0).split()
            return int(fields[0]) / 1e9, int(fields[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0, 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
