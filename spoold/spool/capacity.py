"""How much the spool may still take: its byte cap, the free-disk floor, and the reserve.

A write is refused (``SpoolFull``, with a Retry-After from the measured drain rate)
before it would pass the cap or leave less than the floor free. The reader's own
writes (deletes of delivered rows, clears) are never refused: on a full disk the reserve
file is given back and the write tried once more (``spoold.spool.reserve``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog

from server.sqlite.errors import is_disk_full
from spoold.spool.errors import SpoolFull, SpoolWriteError
from spoold.spool.reserve import DiskReserve
from spoold.spool.stats import DiskFree, RateMeter, retry_after_s

log = structlog.get_logger("spoold.spool")

T = TypeVar("T")


class Capacity:
    """The cap and the floor for the writer; room on a full disk for the reader."""

    def __init__(
        self,
        directory: Path,
        *,
        capacity_bytes: int,
        min_free_disk_bytes: int,
        reserve_bytes: int,
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self.disk, self.drain = DiskFree(directory), RateMeter()
        self.reserve = DiskReserve(directory, reserve_bytes)
        #: A reader write hit a full disk; cleared once drained and the reserve is back.
        self.disk_tight = False

    def check(self, queued_bytes: int, incoming_bytes: int) -> None:
        """Raise SpoolFull if ``incoming_bytes`` more would pass the cap or the disk floor."""
        excess = queued_bytes + incoming_bytes - self.capacity_bytes
        if excess > 0:
            raise SpoolFull(
                f"spool is full ({queued_bytes} of {self.capacity_bytes} bytes queued)",
                retry_after_s(excess, self.drain.rate()),
            )
        try:
            free = self.disk.free_bytes()
            if free - incoming_bytes < self.min_free_disk_bytes:
                free = self.disk.free_bytes(fresh=True)
        except OSError as exc:
            raise SpoolWriteError(f"cannot stat the spool's filesystem: {exc}") from exc
        if free - incoming_bytes < self.min_free_disk_bytes:
            raise SpoolFull(
                f"free disk below the floor ({free} bytes free, floor {self.min_free_disk_bytes})",
                retry_after_s(self.min_free_disk_bytes - free + incoming_bytes, None),
            )

    def retry_after_s(self, nbytes: int) -> float:
        """What a writer refused for ``nbytes`` is told to wait (from the drain rate)."""
        return retry_after_s(nbytes, self.drain.rate())

    def when_full_retry(self, write: Callable[[], T]) -> T:
        """Run one reader-side write (a delete, a clear); on a full disk make room, retry once.

        Acks are what frees the disk, so they must not be starved by it: the
        disk reserve is given back (see ``reserve``) and the write tried again.
        """
        try:
            return write()
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            log.warning("spool_disk_full_making_room", error=str(exc))
        self.disk_tight = True
        self.reserve.release()
        return write()

    def drained(self) -> None:
        """The spool is empty: take the reserve back if there is room."""
        if not self.reserve.present:
            self.reserve.ensure()
            self.disk_tight = not self.reserve.present and self.disk_tight
