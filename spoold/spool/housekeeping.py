"""Deleting the spool's acked rows and vacuuming it, without making a writer wait long.

persist-queue only *marks* rows acked. The rows are deleted once enough acked bytes
piled up (``CLEAR_EVERY_BYTES``), at least every ``clear_interval_s``, and whenever the
spool is empty; the file is vacuumed only when little live data is left and no put came
for a while (a vacuum holds the write lock for as long as it rebuilds the file).

While other rows are queued, the rows acked since the last clear are deleted by id
(``store.delete_acked``: no scan) in transactions of at most ``CLEAR_CHUNK_BYTES``, so
a put waits at most for one of them. persist-queue's own clear scans the table from its
newest row down to the acked ones: with a big backlog of big groups that scan alone
held the write lock ~8 ms. It still runs when the spool is empty (cheap then), and
catches any acked row the deletes by id missed (acked before a restart, set aside as
undecodable, a failed delete).
Housekeeping runs on the reader's side, under its I/O lock, and never fails an ack.
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
#: Acked bytes that trigger a clear. Deleting acked rows holds persist-queue's write
#: lock (puts wait) for a time that grows with the bytes deleted: small, frequent clears
#: keep that wait to a few ms during a big drain (one clear a second deleted tens of MB).
CLEAR_EVERY_BYTES = 2 * MiB
#: Acked bytes deleted per transaction while other rows are queued.
CLEAR_CHUNK_BYTES = 512 * 1024
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
        #: (id, bytes) of the rows acked since the last clear, for the deletes by id.
        self._acked_rows: list[tuple[int, int]] = []
        #: A delete by id failed: the next clear scans (it finds what that one left).
        self._scan_next = False
        #: monotonic time of the last put (written by the writer, read here).
        self.last_put = 0.0

    def acked(self, item_id: int, nbytes: int) -> None:
        """A group was acked: its row waits for the next clear."""
        self._acked_uncleared += 1
        self._acked_uncleared_bytes += nbytes
        self._acked_rows.append((item_id, nbytes))

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
            else:
                self._delete_acked_rows(queue, side)
            self._acked_uncleared, self._last_clear = 0, time.monotonic()
            self._acked_uncleared_bytes = 0
            self._scan_next = False
        except sqlite3.Error as exc:  # housekeeping must never fail an ack
            log.warning("spool_maintenance_failed", error=str(exc))
            self._scan_next = True  # what it left goes with the next clear's scan
        finally:
            self._acked_rows.clear()
        if self._depth.groups == 0:
            self._capacity.drained()

    def _delete_acked_rows(self, queue: Any, side: Any) -> None:
        """The rows acked since the last clear, by id, ``CLEAR_CHUNK_BYTES`` at a time."""
        chunk: list[int] = []
        chunk_bytes = 0
        for item_id, nbytes in self._acked_rows:
            chunk.append(item_id)
            chunk_bytes += nbytes
            if chunk_bytes >= CLEAR_CHUNK_BYTES:
                self._capacity.when_full_retry(
                    lambda ids=chunk: store.delete_acked(queue, side, ids)  # type: ignore[misc]
                )
                chunk, chunk_bytes = [], 0
        if chunk:
            self._capacity.when_full_retry(lambda: store.delete_acked(queue, side, chunk))
