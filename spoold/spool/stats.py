"""Size accounting for the spool: the stats snapshot, free-disk probing and Retry-After.

persist-queue's ``full()`` never says full, so spoold enforces its own cap. The
pieces here are small and mostly pure so they can be tested without a disk:
the cap decision is ``spoold.spool.capacity``; what to tell the client to wait
is ``retry_after_s``, from the drain rate measured by ``RateMeter``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """A snapshot of the spool.

    ``bytes`` is the logical size: serialised bytes of every queued group not yet
    acknowledged (what the cap counts). ``file_bytes`` is what SQLite occupies on
    disk (database + WAL), which also holds free pages reused by later writes.
    ``oldest_enqueued_at`` is the wall-clock time stored in the oldest unacked
    group; ``oldest_age_s`` is never negative even if the clock stepped back.
    """

    depth_ops: int
    depth_groups: int
    inflight_groups: int
    bytes: int
    capacity_bytes: int
    file_bytes: int
    disk_free_bytes: int | None
    min_free_disk_bytes: int
    oldest_enqueued_at: float | None
    oldest_age_s: float | None


def age_s(enqueued_at: float | None, now: float) -> float | None:
    """Age of an item stamped with wall time, clamped at zero (clocks step back)."""
    return None if enqueued_at is None else max(0.0, now - enqueued_at)


def retry_after_s(
    excess_bytes: int,
    drain_bytes_per_s: float | None,
    *,
    floor_s: float = 1.0,
    ceiling_s: float = 60.0,
    unknown_s: float = 5.0,
) -> float:
    """Seconds a refused client should wait: time to drain the excess, clamped."""
    if drain_bytes_per_s is None or drain_bytes_per_s <= 0:
        return unknown_s
    return min(ceiling_s, max(floor_s, excess_bytes / drain_bytes_per_s))


class RateMeter:
    """Bytes per second over the last completed window (``None`` until one exists)."""

    def __init__(self, window_s: float = 5.0, clock: Clock = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._start = clock()
        self._count = 0
        self._rate: float | None = None

    def add(self, amount: int) -> None:
        now = self._clock()
        elapsed = now - self._start
        if elapsed >= self._window_s:
            self._rate = self._count / elapsed
            self._start, self._count = now, 0
        self._count += amount

    def rate(self) -> float | None:
        elapsed = self._clock() - self._start
        if elapsed >= self._window_s:
            return self._count / elapsed
        return self._rate


class DiskFree:
    """Free bytes on the spool's filesystem, probed at most once per ``ttl_s``.

    Between probes three times the bytes this process queued are subtracted
    (SQLite writes each group to the WAL, later to the database, in whole
    pages), so a burst inside one TTL cannot run past the floor unnoticed.
    ``fresh=True`` probes now: a refusal is never based on a stale estimate.
    """

    WRITE_AMPLIFICATION = 3

    def __init__(self, path: Path, ttl_s: float = 1.0, clock: Clock = time.monotonic) -> None:
        self._path = path
        self._ttl_s = ttl_s
        self._clock = clock
        self._probed_at: float | None = None
        self._free = 0
        self._written_since = 0

    def free_bytes(self, *, fresh: bool = False) -> int:
        now = self._clock()
        if fresh or self._probed_at is None or now - self._probed_at >= self._ttl_s:
            self._free = shutil.disk_usage(self._path).free
            self._probed_at, self._written_since = now, 0
        return max(0, self._free - self.WRITE_AMPLIFICATION * self._written_since)

    def wrote(self, amount: int) -> None:
        self._written_since += amount
