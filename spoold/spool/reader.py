"""The spool's read protocol: groups handed out in FIFO order, then acked or given back.

Taking a group only reads its row; the group is *in flight* (in memory) until it is
acked (delivered: its row is deleted, ``ACK_CHUNK_BYTES`` of groups per transaction)
or nacked (given back: handed out again, in its original order). Nothing on disk says
a row is in flight: after a crash every row not deleted is simply read again, which
persist-queue's "unack" mark also gave (``auto_resume``), at twice the group's bytes
through the WAL under the put lock (its ``get`` and ``ack`` rewrite the whole row).
The reader walks the rows with a cursor instead of rescanning the rows in flight,
stops at the last item the accept thread has published (recorded in the runs index),
and carries a row it read but could not hand out yet. Every method runs on the
drainer's thread, under the spool's I/O lock, which the caller holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import structlog

from spoold.spool import store
from spoold.spool.capacity import Capacity
from spoold.spool.codec import RawGroup, SpoolGroup
from spoold.spool.depth import Depth
from spoold.spool.errors import SpoolWriteError
from spoold.spool.housekeeping import Housekeeper

log = structlog.get_logger("spoold.spool")

#: Groups' bytes deleted per transaction at ack: a put waits at most for one of them.
ACK_CHUNK_BYTES = 512 * 1024


class Reader:
    """FIFO reads, acks and nacks over an open queue (``queue``: persist-queue's,
    ``side``: a plain connection to the same file)."""

    def __init__(
        self,
        queue: Any,
        side: Any,
        depth: Depth,
        capacity: Capacity,
        housekeeper: Housekeeper,
    ) -> None:
        self._queue, self._side = queue, side
        self._depth, self._capacity, self._housekeeper = depth, capacity, housekeeper
        #: Groups handed out and not yet acked or nacked: (operations, bytes) by id. Only
        #: their sizes: the decoded operations are the caller's, and go when it drops them.
        self.inflight: dict[int, tuple[int, int]] = {}
        #: A row read, not yet handed out: kept as bytes, decoded when it is.
        self._carry: tuple[int, RawGroup] | None = None
        self._cursor: int | None = None
        #: Ids in flight when a nack sent the cursor back: the reads skip them (every
        #: other group in flight was read before, so its id is at or below the cursor).
        self._skip: list[int] = []
        #: Rows deleted by acks so far (the spool's estimate of its WAL growth).
        self.deleted = 0

    def get_groups(self, max_ops: int, max_bytes: int | None) -> list[SpoolGroup]:
        """See ``Spool.get_groups``."""
        groups: list[SpoolGroup] = []
        total = 0
        total_bytes = 0
        while total < max_ops and not (groups and self._capacity.disk_tight):
            try:
                got = self._carry or self._next_row()
                if got is None:
                    break
                item_id, raw = got
                if item_id > self._depth.published():  # not in the index yet: next time
                    self._carry = got
                    break
                over_bytes = max_bytes is not None and total_bytes + raw.nbytes > max_bytes
                if groups and (total + raw.n_ops > max_ops or over_bytes):
                    self._carry = got  # already read: hand it out next time
                    break
                self._carry = got  # until it is handed out or set aside
                group = self._decoded(item_id, raw)
                self._carry = None
            except SpoolWriteError as exc:
                if not groups:
                    raise
                log.warning("spool_read_cut_short", error=str(exc), groups=len(groups))
                break
            if group is None:
                continue
            self.inflight[group.id] = (len(group.ops), group.nbytes)
            groups.append(group)
            total += len(group.ops)
            total_bytes += group.nbytes
        return groups

    def _next_row(self) -> tuple[int, RawGroup] | None:
        """The next live row after the cursor that is not in flight, not decoded (None
        when there is none). In-flight rows lie after the cursor only once a nack reset
        it; the query skips them without reading their bytes."""
        after = self._cursor or 0
        if self._skip and self._skip[-1] <= after:
            self._skip = []  # the cursor is past them all
        skip = [item_id for item_id in self._skip if item_id > after and item_id in self.inflight]
        try:
            row = store.next_live_row(self._side, after, skip)
        except sqlite3.Error as exc:
            raise SpoolWriteError(f"spool read failed: {exc}") from exc
        if row is None:
            return None
        pqid, data = row
        self._cursor = pqid
        return pqid, RawGroup(data)

    def _decoded(self, item_id: int, raw: RawGroup) -> SpoolGroup | None:
        """The row as a group; an undecodable row is set aside (None) rather than wedge
        the reader."""
        decoded = raw.decode()
        if decoded.valid:
            return SpoolGroup(item_id, decoded.ops, decoded.enqueued_at, decoded.nbytes)
        log.error("spool_group_undecodable", id=item_id, bytes=decoded.nbytes)
        try:  # the scanning clear deletes it (spool empty, or before a vacuum)
            self._capacity.when_full_retry(lambda: self._queue.ack_failed(id=item_id))
        except (sqlite3.Error, OSError) as exc:  # kept as the carry: set aside next read
            raise SpoolWriteError(f"spool read failed: {exc}") from exc
        self._depth.forget(decoded.n_ops, decoded.nbytes)
        return None

    def ack(self, groups: Iterable[SpoolGroup]) -> None:
        """See ``Spool.ack``: delete the groups' rows, ``ACK_CHUNK_BYTES`` at a time."""
        chunk: list[int] = []
        chunk_bytes = 0
        for item_id in dict.fromkeys(group.id for group in groups):  # once each, in order
            if item_id not in self.inflight:
                continue  # already acked or nacked: never count it twice
            chunk.append(item_id)
            chunk_bytes += self.inflight[item_id][1]
            if chunk_bytes >= ACK_CHUNK_BYTES:
                self._delete(chunk)
                chunk, chunk_bytes = [], 0
        if chunk:
            self._delete(chunk)
        self._housekeeper.maintain(self._queue, self._side)
        self._depth.reading_oldest()
        try:
            oldest = store.oldest_enqueued_at(self._side)
        except sqlite3.Error as exc:  # the acks are done; a stale age is no reason to fail
            log.warning("spool_maintenance_failed", error=str(exc))
            return
        self._depth.after_ack(oldest)

    def _delete(self, ids: list[int]) -> None:
        """Delete delivered groups' rows (one transaction); they leave the in-flight set
        only once it committed, so a retried ack covers a failed one."""
        try:
            deleted = self._capacity.when_full_retry(
                lambda: store.delete_rows(self._queue, self._side, ids)
            )
        except Exception as exc:
            raise SpoolWriteError(f"spool ack failed: {exc}") from exc
        for item_id in ids:
            n_ops, nbytes = self.inflight.pop(item_id)
            self._depth.forget(n_ops, nbytes)
            self._capacity.drain.add(nbytes)
            self._housekeeper.acked(nbytes)
        self.deleted += deleted

    def nack(self, groups: Iterable[SpoolGroup]) -> None:
        """See ``Spool.nack``. Nothing to write: the rows were never marked, so reading
        again from the first live row hands them out again, in order (the carried row,
        read but not handed out, is read again too)."""
        for group in groups:
            self.inflight.pop(group.id, None)
        self._carry = None
        self._cursor = None
        self._skip = sorted(self.inflight)
