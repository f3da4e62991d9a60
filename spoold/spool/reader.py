"""The spool's read protocol: groups handed out in FIFO order, then acked or given back.

A group got from persist-queue is *in flight* until it is acked (delivered: its row
is deleted at the next clear) or nacked (given back: handed out again, in its
original order). The reader walks the queue with a cursor instead of rescanning the
rows in flight, stops at the last item the accept thread has published (recorded in
the runs index), and carries a row it got but could not hand out yet. Every method
runs on the drainer's thread, under the spool's I/O lock, which the caller holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import structlog
from persistqueue.exceptions import Empty

from spoold.spool import store
from spoold.spool.capacity import Capacity
from spoold.spool.codec import RawGroup, SpoolGroup
from spoold.spool.depth import Depth
from spoold.spool.errors import SpoolWriteError
from spoold.spool.housekeeping import Housekeeper

log = structlog.get_logger("spoold.spool")


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
        #: A row got from the queue, not yet handed out: kept as bytes, decoded when it is.
        self._carry: tuple[int, RawGroup] | None = None
        self._cursor: int | None = None

    def get_groups(self, max_ops: int, max_bytes: int | None) -> list[SpoolGroup]:
        """See ``Spool.get_groups``."""
        groups: list[SpoolGroup] = []
        total = 0
        total_bytes = 0
        while total < max_ops and not (groups and self._capacity.disk_tight):
            try:
                got = self._carry or self._next_row()
            except SpoolWriteError as exc:
                if not groups:
                    raise
                log.warning("spool_read_cut_short", error=str(exc), groups=len(groups))
                break
            if got is None:
                break
            item_id, raw = got
            if item_id > self._depth.published():  # not recorded in the index yet: next time
                self._carry = got
                break
            over_bytes = max_bytes is not None and total_bytes + raw.nbytes > max_bytes
            if groups and (total + raw.n_ops > max_ops or over_bytes):
                self._carry = got  # already got: hand it out next time
                break
            self._carry = None
            group = self._decoded(item_id, raw)
            if group is None:
                continue
            self.inflight[group.id] = (len(group.ops), group.nbytes)
            groups.append(group)
            total += len(group.ops)
            total_bytes += group.nbytes
        return groups

    def _next_row(self) -> tuple[int, RawGroup] | None:
        """The next row after the cursor, not decoded (None when there is none)."""
        retry = self._capacity.when_full_retry
        try:
            if self._cursor is None:
                row = retry(lambda: self._queue.get(block=False, raw=True))
            else:  # continue after the last id instead of rescanning in-flight rows
                cursor = self._cursor
                row = retry(
                    lambda c=cursor: self._queue.get(  # type: ignore[misc]
                        block=False, raw=True, id=c, next_in_order=True
                    )
                )
        except Empty:
            return None
        except sqlite3.Error as exc:
            raise SpoolWriteError(f"spool read failed: {exc}") from exc
        pqid, raw = int(row["pqid"]), row["data"]
        assert isinstance(raw, RawGroup)
        self._cursor = pqid
        return pqid, raw

    def _decoded(self, item_id: int, raw: RawGroup) -> SpoolGroup | None:
        """The row as a group; an undecodable row is set aside (None) rather than wedge
        the reader."""
        decoded = raw.decode()
        if decoded.valid:
            return SpoolGroup(item_id, decoded.ops, decoded.enqueued_at, decoded.nbytes)
        log.error("spool_group_undecodable", id=item_id, bytes=decoded.nbytes)
        try:
            self._queue.ack_failed(id=item_id)  # deleted with the acked rows
        except sqlite3.Error as exc:
            raise SpoolWriteError(f"spool read failed: {exc}") from exc
        self._depth.forget(decoded.n_ops, decoded.nbytes)
        return None

    def ack(self, groups: Iterable[SpoolGroup]) -> None:
        """See ``Spool.ack``."""
        for group in groups:
            held = self.inflight.pop(group.id, None)
            if held is None:
                continue  # already acked or nacked: never count it twice
            try:
                self._capacity.when_full_retry(lambda i=group.id: self._queue.ack(id=i))  # type: ignore[misc]
            except Exception as exc:  # kept in flight, so a retried ack covers it
                self.inflight[group.id] = held
                raise SpoolWriteError(f"spool ack failed: {exc}") from exc
            n_ops, nbytes = held
            self._depth.forget(n_ops, nbytes)
            self._capacity.drain.add(nbytes)
            self._housekeeper.acked(group.id, nbytes)
        self._housekeeper.maintain(self._queue, self._side)
        self._depth.reading_oldest()
        try:
            oldest = store.oldest_enqueued_at(self._side)
        except sqlite3.Error as exc:  # the acks are done; a stale age is no reason to fail
            log.warning("spool_maintenance_failed", error=str(exc))
            return
        self._depth.after_ack(oldest)

    def nack(self, groups: Iterable[SpoolGroup]) -> None:
        """See ``Spool.nack``."""
        back = [g for g in groups if g.id in self.inflight]
        self._cursor = None
        # The carried group (taken from the queue, not handed out) is newer than
        # anything nacked, and only this object knows it: nack it first, and keep
        # it as the carry until that commits, so a retried nack still covers it.
        if self._carry is not None:
            self._nack_one(self._carry[0])
            self._carry = None
        for group in back:
            # A group leaves the in-flight set only once its nack is committed: a
            # failed nack (disk full) can be retried; otherwise the row would stay
            # marked "unack" and never be handed out again until a restart.
            self._nack_one(group.id)
            del self.inflight[group.id]

    def _nack_one(self, item_id: int) -> None:
        try:
            self._capacity.when_full_retry(lambda: self._queue.nack(id=item_id))
        except sqlite3.Error as exc:
            raise SpoolWriteError(f"spool nack failed: {exc}") from exc
