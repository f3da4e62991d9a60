"""The durable local spool: a capped FIFO of operation groups on persist-queue.

persist-queue commits (and fsyncs) once per ``put``, ``get`` and ``ack`` and has
no batch API, so one queue item is a *group* of operations (see ``spoold.accept.acceptor``)
and the drainer gets and acks whole groups. Groups got but never acked (crash,
kill -9, close without ack) are ready again at the next open (``auto_resume``).
persist-queue only *marks* rows acked: the spool deletes them at least every
``clear_interval_s`` and vacuums once little live data remains. The accept
path and the drainer share one transaction lock on the file (persist-queue's,
replaced by ``spoold.spool.writegate.PutFirstLock``): a put waits at most for the
drainer's transaction in progress, never for its next one; the counters have their
own short lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
from persistqueue.exceptions import Empty

from spoold.spool import layout, store, totals
from spoold.spool.checkpoint import WalCheckpointer
from spoold.spool.codec import (
    RawGroup,
    SpoolGroup,
    accepted_since,
    encode_group,
    encode_op,
)
from spoold.spool.errors import (
    SpoolClosedError,
    SpoolFull,
    SpoolWriteError,
    is_disk_full,
    translate_write_error,
)
from spoold.spool.reserve import DiskReserve
from spoold.spool.stats import DiskFree, RateMeter, SpoolStats, age_s, retry_after_s
from spoold.spool.writegate import PutFirstLock

log = structlog.get_logger("spoold.spool")

MiB = 1024 * 1024
T = TypeVar("T")
#: The WAL is checkpointed after this many bytes of puts (see ``checkpoint``).
WAL_CHECKPOINT_BYTES = MiB // 4
#: Acked bytes that trigger a clear. Deleting acked rows holds persist-queue's write
#: lock (puts wait) for a time that grows with the bytes deleted: small, frequent clears
#: keep that wait to a few ms during a big drain (one clear a second deleted tens of MB).
_CLEAR_EVERY_BYTES = 2 * MiB
#: Vacuum (which holds the write lock for as long as it rebuilds) only this long after
#: the last put, so a writer is not kept waiting by it.
_VACUUM_AFTER_IDLE_S = 5.0


class Spool:
    """A capped, crash-safe FIFO of operation groups in ``directory``.

    One thread writes (``put_*``) while another reads (``get_groups``/``ack``/``nack``).
    The cap counts serialised group bytes, not file size. Stop the writer first.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        capacity_bytes: int = 512 * MiB,
        min_free_disk_bytes: int = 256 * MiB,
        clear_interval_s: float = 1.0,
        vacuum_threshold_bytes: int = 16 * MiB,
        vacuum_max_live_bytes: int = 4 * MiB,
        busy_timeout_s: float = 10.0,
        reserve_bytes: int = 16 * MiB,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity_bytes = capacity_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self._db_path = self.directory / layout.DB_FILE
        self._clear_interval_s = clear_interval_s
        self._vacuum_threshold = vacuum_threshold_bytes
        self._vacuum_max_live = vacuum_max_live_bytes
        self._io_lock = threading.Lock()  # reader side: get/ack/nack/housekeeping
        self._counts_lock = threading.Lock()
        #: Groups handed out and not yet acked or nacked: (operations, bytes) by id. Only
        #: their sizes: the decoded operations are the caller's, and go when it drops them.
        self._inflight: dict[int, tuple[int, int]] = {}
        #: A row got from the queue, not yet handed out: kept as bytes, decoded when it is.
        self._carry: tuple[int, RawGroup] | None = None
        self._cursor: int | None = None
        self._acked_uncleared, self._last_clear = 0, time.monotonic()
        self._acked_uncleared_bytes = 0
        self._last_put = 0.0
        self._closed = False
        self._queue: Any = None
        self._side: Any = None
        self._checkpointer: WalCheckpointer | None = None
        self._disk_tight = False  # a reader write hit a full disk; cleared once drained
        self._disk, self._drain = DiskFree(self.directory), RateMeter()
        self._depth_groups = self._depth_ops = self._bytes = 0
        self._oldest: float | None = None
        #: The earliest group put since an ack began reading the oldest live group: a put
        #: that commits after that read must not be hidden by it (``ack``).
        self._put_since_read: float | None = None
        self._published = 0
        #: Where a corrupt spool file was renamed at open, if it was.
        self.quarantined_to: Path | None = None
        #: Random id of this spool file (a new file, e.g. after a corrupt one, has a new id).
        self.identity = ""
        self._reserve = DiskReserve(self.directory, reserve_bytes)
        self._put_lock = PutFirstLock()
        self._lock_fd = layout.acquire_lock(self.directory)
        try:
            layout.check_format(self.directory)
            self._queue, self._side, self.quarantined_to = store.open_queue(
                self.directory, busy_timeout_s
            )
            totals.install(self._side)
            self._queue.tran_lock = self._put_lock  # puts first (``spoold.spool.writegate``)
            self._checkpointer = WalCheckpointer(
                self._db_path, busy_timeout_s, WAL_CHECKPOINT_BYTES
            )
            self.identity = store.spool_identity(self._side)
            self._recount()
            self._published = store.last_allocated_id(self._side)
            self._reserve.ensure()
        except BaseException:
            self.close()
            raise
        log.info("spool_opened", path=str(self._db_path), ops=self._depth_ops, bytes=self._bytes)

    # -- writing (the accept thread) --------------------------------------------------------
    def put_group(self, ops: Sequence[dict[str, Any]]) -> int:
        """Durably append ``ops`` as one queue item (one commit, one fsync); its id."""
        return self.put_encoded([encode_op(op) for op in ops], accepted_since=accepted_since(ops))

    def put_encoded(
        self,
        encoded_ops: Sequence[bytes],
        *,
        publish: bool = True,
        accepted_since: float | None = None,
    ) -> int:
        """Like ``put_group`` for operations already serialised with ``encode_op``.

        With ``publish=False`` the reader does not see the item until ``publish``
        is called with its id: the accept thread first records it in the runs
        index, so the drainer never settles an item the index does not know yet.
        ``accepted_since`` (epoch seconds) is when the oldest of the operations was
        accepted, if earlier than now: the group's time is never later than its
        operations' (``X-Spoold-Queued-Since`` is read from it, see
        ``spoold.forward.presence``). Returns 0 (and writes nothing) for no operations.
        """
        _check_open(self._closed)
        if not encoded_ops:
            return 0
        enqueued_at = time.time()
        if accepted_since is not None and 0 < accepted_since < enqueued_at:
            enqueued_at = accepted_since
        data = encode_group(encoded_ops, enqueued_at)
        try:
            with self._put_lock.urgent():
                item_id = int(self._queue.put(data))
        except (sqlite3.Error, OSError) as exc:
            raise translate_write_error(exc, retry_after_s(len(data), self._drain.rate())) from exc
        with self._counts_lock:
            self._depth_groups += 1
            self._depth_ops += len(encoded_ops)
            self._bytes += len(data)
            if self._oldest is None:
                self._oldest = enqueued_at
            if self._put_since_read is None or enqueued_at < self._put_since_read:
                self._put_since_read = enqueued_at
            if publish:
                self._published = max(self._published, item_id)
        self._disk.wrote(len(data))
        self._last_put = time.monotonic()
        checkpointer = self._checkpointer  # read once: close() may clear it meanwhile
        if checkpointer is not None:
            checkpointer.note_written(len(data))
        return item_id

    def checkpoint_busy_s(self) -> float:
        """Seconds the spool's WAL checkpoints have run so far (see ``spoold.pauses``)."""
        checkpointer = self._checkpointer
        return 0.0 if checkpointer is None else checkpointer.busy.busy_s()

    def publish(self, item_id: int) -> None:
        """Let the reader hand out items up to ``item_id``."""
        with self._counts_lock:
            self._published = max(self._published, item_id)

    def check_capacity(self, incoming_bytes: int) -> None:
        """Raise SpoolFull if ``incoming_bytes`` more would pass the cap or the disk floor."""
        with self._counts_lock:
            queued = self._bytes
        excess = queued + incoming_bytes - self.capacity_bytes
        if excess > 0:
            raise SpoolFull(
                f"spool is full ({queued} of {self.capacity_bytes} bytes queued)",
                retry_after_s(excess, self._drain.rate()),
            )
        try:
            free = self._disk.free_bytes()
            if free - incoming_bytes < self.min_free_disk_bytes:
                free = self._disk.free_bytes(fresh=True)
        except OSError as exc:
            raise SpoolWriteError(f"cannot stat the spool's filesystem: {exc}") from exc
        if free - incoming_bytes < self.min_free_disk_bytes:
            raise SpoolFull(
                f"free disk below the floor ({free} bytes free, floor {self.min_free_disk_bytes})",
                retry_after_s(self.min_free_disk_bytes - free + incoming_bytes, None),
            )

    # -- reading (the drainer's thread) ----------------------------------------------------

    def get_groups(self, max_ops: int, max_bytes: int | None = None) -> list[SpoolGroup]:
        """Take the next groups in FIFO order, at most ``max_ops`` operations (and
        ``max_bytes`` spooled bytes, if given) in all.

        A single group larger than the bounds is still returned alone, so memory is
        bounded by one group or the bounds, whatever the backlog. While the disk
        is full, one group at a time: taking a group rewrites its row, so a big read
        would spend the space that acking the first groups needs. If a read fails
        after some groups were taken (a full disk), those are returned: the caller
        owns them, so they are acked or given back, never stranded in flight.
        """
        if max_ops < 1:
            raise ValueError("max_ops must be >= 1")
        groups: list[SpoolGroup] = []
        total = 0
        total_bytes = 0
        with self._io_lock:
            _check_open(self._closed)
            while total < max_ops and not (groups and self._disk_tight):
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
                with self._counts_lock:
                    published = self._published
                if item_id > published:  # not recorded in the index yet: next time
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
                self._inflight[group.id] = (len(group.ops), group.nbytes)
                groups.append(group)
                total += len(group.ops)
                total_bytes += group.nbytes
        return groups

    def _next_row(self) -> tuple[int, RawGroup] | None:
        """The next row after the cursor, not decoded (None when there is none)."""
        try:
            if self._cursor is None:
                row = self._when_full_retry(lambda: self._queue.get(block=False, raw=True))
            else:  # continue after the last id instead of rescanning in-flight rows
                cursor = self._cursor
                row = self._when_full_retry(
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
        self._forget(decoded.n_ops, decoded.nbytes)
        return None

    def ack(self, groups: Iterable[SpoolGroup]) -> None:
        """Mark groups delivered (one commit each); their rows are deleted soon after."""
        with self._io_lock:
            _check_open(self._closed)
            for group in groups:
                held = self._inflight.pop(group.id, None)
                if held is None:
                    continue  # already acked or nacked: never count it twice
                try:
                    self._when_full_retry(lambda i=group.id: self._queue.ack(id=i))  # type: ignore[misc]
                except Exception as exc:  # kept in flight, so a retried ack covers it
                    self._inflight[group.id] = held
                    raise SpoolWriteError(f"spool ack failed: {exc}") from exc
                n_ops, nbytes = held
                self._forget(n_ops, nbytes)
                self._drain.add(nbytes)
                self._acked_uncleared += 1
                self._acked_uncleared_bytes += nbytes
            self._maintain()
            with self._counts_lock:
                self._put_since_read = None
            try:
                oldest = store.oldest_enqueued_at(self._side)
            except sqlite3.Error as exc:  # the acks are done; a stale age is no reason to fail
                log.warning("spool_maintenance_failed", error=str(exc))
                return
            with self._counts_lock:
                # A put that committed after the read is not in it: "empty" would hide it
                # (no X-Spoold-Queued-Since while it is queued), and the next put would
                # take its place. Only acks (this thread) remove groups: a time read is
                # still live, and puts only add later ones.
                if oldest is None:
                    oldest = self._put_since_read
                self._oldest = oldest

    def nack(self, groups: Iterable[SpoolGroup]) -> None:
        """Give groups back; they are returned again, in their original order."""
        with self._io_lock:
            _check_open(self._closed)
            back = [g for g in groups if g.id in self._inflight]
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
                del self._inflight[group.id]

    def _nack_one(self, item_id: int) -> None:
        try:
            self._when_full_retry(lambda: self._queue.nack(id=item_id))
        except sqlite3.Error as exc:
            raise SpoolWriteError(f"spool nack failed: {exc}") from exc

    def items_after(self, item_id: int, limit: int) -> tuple[int, list[SpoolGroup]]:
        """The next ``limit`` live rows after ``item_id``: (last id scanned, their items).

        For start-up repair; undecodable rows are scanned but not returned (the
        reader sets them aside). The id is ``item_id`` when nothing follows.
        """
        with self._io_lock:
            _check_open(self._closed)
            rows = store.live_rows_after(self._side, item_id, limit)
        items = [
            SpoolGroup(pqid, decoded.ops, decoded.enqueued_at, decoded.nbytes)
            for pqid, decoded in rows
            if decoded.valid
        ]
        return (rows[-1][0] if rows else item_id), items

    def last_allocated_id(self) -> int:
        """The highest item id this spool file ever gave out (0 for a new file)."""
        with self._io_lock:
            _check_open(self._closed)
            return store.last_allocated_id(self._side)

    def discard(self, item_ids: Iterable[int]) -> int:
        """Ack items by id without handing them out (start-up repair: already delivered).

        Ids that are not live (acked before, or never existed) are skipped. Returns
        how many were discarded.
        """
        with self._io_lock:
            _check_open(self._closed)
            live = store.live_ids(self._side, item_ids)
            try:
                for item_id in live:
                    self._when_full_retry(lambda i=item_id: self._queue.ack(id=i))  # type: ignore[misc]
            except sqlite3.Error as exc:
                raise SpoolWriteError(f"spool ack failed: {exc}") from exc
            finally:
                self._recount()
        return len(live)

    def _recount(self) -> None:
        groups, nbytes, ops = totals.read(self._side)
        oldest = store.oldest_enqueued_at(self._side)
        with self._counts_lock:
            self._depth_groups, self._bytes, self._depth_ops = groups, nbytes, ops
            self._oldest = oldest

    def _when_full_retry(self, write: Callable[[], T]) -> T:
        """Run one reader-side write (mark, ack, nack); on a full disk make room, retry once.

        Acks are what frees the disk, so they must not be starved by it: the
        disk reserve is given back (see ``reserve``) and the write tried again.
        """
        try:
            return write()
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            log.warning("spool_disk_full_making_room", error=str(exc))
        self._disk_tight = True
        self._reserve.release()
        return write()

    def _forget(self, n_ops: int, nbytes: int) -> None:
        with self._counts_lock:
            self._depth_groups -= 1
            self._depth_ops -= n_ops
            self._bytes -= nbytes

    # -- housekeeping ----------------------------------------------------------------------

    def housekeep_when_idle(self) -> None:
        """Delete acked rows and vacuum, if no put came for a while (the drainer calls
        this when it has nothing to send; a vacuum would make a writer wait)."""
        with self._io_lock:
            if self._closed or time.monotonic() - self._last_put < _VACUUM_AFTER_IDLE_S:
                return
            self._acked_uncleared = max(self._acked_uncleared, 1)  # due: run it now
            self._maintain()

    def _maintain(self) -> None:
        due = (
            self._acked_uncleared_bytes >= _CLEAR_EVERY_BYTES
            or time.monotonic() - self._last_clear >= self._clear_interval_s
            or self._depth_groups == 0
        )
        if not (self._acked_uncleared and due):
            return
        # Vacuuming copies the live rows while puts wait: only when few are left.
        may_vacuum = (
            self._bytes <= self._vacuum_max_live
            and time.monotonic() - self._last_put >= _VACUUM_AFTER_IDLE_S
        )
        try:
            self._when_full_retry(
                lambda: store.housekeep(
                    self._queue, self._side, self._vacuum_threshold if may_vacuum else None
                )
            )
            self._acked_uncleared, self._last_clear = 0, time.monotonic()
            self._acked_uncleared_bytes = 0
        except sqlite3.Error as exc:  # housekeeping must never fail an ack
            log.warning("spool_maintenance_failed", error=str(exc))
        if self._depth_groups == 0 and not self._reserve.present:
            self._reserve.ensure()  # drained: take the reserve back if there is room
            self._disk_tight = not self._reserve.present and self._disk_tight

    # -- state -----------------------------------------------------------------------------

    def stats(self) -> SpoolStats:
        """A snapshot of depth, size and age (no disk I/O beyond a cached statvfs)."""
        with self._counts_lock:
            ops, groups, nbytes = self._depth_ops, self._depth_groups, self._bytes
            # An ack updates the oldest age just after the depth: empty means no age.
            oldest = self._oldest if groups else None
        try:
            free: int | None = self._disk.free_bytes()
        except OSError:
            free = None
        return SpoolStats(
            depth_ops=ops,
            depth_groups=groups,
            inflight_groups=len(self._inflight),
            bytes=nbytes,
            capacity_bytes=self.capacity_bytes,
            file_bytes=layout.file_bytes(self._db_path),
            disk_free_bytes=free,
            min_free_disk_bytes=self.min_free_disk_bytes,
            oldest_enqueued_at=oldest,
            oldest_age_s=age_s(oldest, time.time()),
        )

    def synchronous_modes(self) -> list[int]:
        """``PRAGMA synchronous`` of every open connection to the spool file (2 is FULL)."""
        with self._io_lock:
            _check_open(self._closed)
            conns = [*self._queue.connections, self._side]
            if self._checkpointer is not None:
                conns.append(self._checkpointer.connection)
            return [int(conn.execute("PRAGMA synchronous").fetchone()[0]) for conn in conns]

    def close(self) -> None:
        """Close the files; groups got but not acked come back at the next open."""
        self._closed = True
        with self._io_lock:
            if self._queue is not None:
                self._maintain()
                self._queue.close()
                self._queue = None
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            if self._side is not None:
                self._side.close()
                self._side = None
            if self._lock_fd >= 0:
                layout.release_lock(self._lock_fd)
                self._lock_fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_open(closed: bool) -> None:
    if closed:
        raise SpoolClosedError("spool is closed")
