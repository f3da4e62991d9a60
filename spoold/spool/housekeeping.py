"""Clearing the spool's leftover rows and vacuuming it, without making a writer wait long.

A delivered group's row is deleted when it is acked (``spoold.spool.reader``). What is
left for the clear are rows set aside as undecodable (persist-queue's ``ack_failed``)
and rows a spool from before that change marked acked: persist-queue's scanning clear
deletes them. That scan walks the table from its newest row down (with a big backlog of
big groups it held the write lock ~8 ms), so it runs only when the spool is empty
(cheap then), before a vacuum, and after a failed clear. The file is vacuumed only when
little live data is left and no put came for a while (a vacuum holds the write lock for
as long as it rebuilds the file). Housekeeping runs on the reader's side, under its I/O
lock, and never fails an ack.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import structlog

from spoold.spool import store
from spoold.spool.capacity import Capacity
from spoold.spool.depth import Depth

log = structlog.get_logger("spoold.spool")

MiB = 1024 * 1024
#: Acked bytes after which housekeeping is due (a clear if the spool is empty, a vacuum
#: if little is left), besides every ``clear_interval_s``.
CLEAR_EVERY_BYTES = 2 * MiB
#: Vacuum (which holds the write lock for as long as it rebuilds) only this long after
#: the last put, so a writer is not kept waiting by it.
VACUUM_AFTER_IDLE_S = 5.0


class Housekeeper:
    """When to clear and vacuum; the caller holds the reader's I/O lock."""

    def __init__(
        self,
        depth: Depth,
        capacity: Capacity,
        *,
        clear_interval_s: float,
        vacuum_threshold_bytes: int,
        vacuum_max_live_bytes: int,
    ) -> None:
        self._depth, self._capacity = depth, capacity
        self._clear_interval_s = clear_interval_s
        self._vacuum_threshold = vacuum_threshold_bytes
        self._vacuum_max_live = vacuum_max_live_bytes
        self._acked_uncleared, self._last_clear = 0, time.monotonic()
        self._acked_uncleared_bytes = 0
        #: A clear failed: the next due one scans even with rows queued.
        self._scan_next = False
        #: monotonic time of the last put (written by the writer, read here).
        self.last_put = 0.0

    def acked(self, nbytes: int) -> None:
        """A group was acked (its row deleted): housekeeping may be due."""
        self._acked_uncleared += 1
        self._acked_uncleared_bytes += nbytes

    def idle(self) -> bool:
        """No put came for ``VACUUM_AFTER_IDLE_S``."""
        return time.monotonic() - self.last_put >= VACUUM_AFTER_IDLE_S

    def when_idle(self, queue: Any, side: Any) -> None:
        """Clear (and maybe vacuum) now, if no put came for a while."""
        if not self.idle():
            return
        self._acked_uncleared = max(self._acked_uncleared, 1)  # due: run it now
        self.maintain(queue, side)

    def maintain(self, queue: Any, side: Any) -> None:
        """Clear if due, vacuum if the file is mostly free; take the reserve back once
        the spool is empty."""
        due = (
            self._acked_uncleared_bytes >= CLEAR_EVERY_BYTES
            or time.monotonic() - self._last_clear >= self._clear_interval_s
            or self._depth.groups == 0
        )
        if not (self._acked_uncleared and due):
            return
        # Vacuuming copies the live rows while puts wait: only when few are left.
        may_vacuum = self._depth.bytes <= self._vacuum_max_live and self.idle()
        scan = may_vacuum or self._depth.groups == 0 or side is None or self._scan_next
        try:
            if scan:
                threshold = self._vacuum_threshold if may_vacuum else None
                self._capacity.when_full_retry(lambda: store.housekeep(queue, side, threshold))
            self._acked_uncleared, self._last_clear = 0, time.monotonic()
            self._acked_uncleared_bytes = 0
            self._scan_next = False
        except sqlite3.Error as exc:  # housekeeping must never fail an ack
            log.warning("spool_maintenance_failed", error=str(exc))
            self._scan_next = True  # the next due clear scans, with rows queued or not
        if self._depth.groups == 0:
            self._capacity.drained()
