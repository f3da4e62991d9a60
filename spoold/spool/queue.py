"""The durable local spool: a capped FIFO of operation groups on persist-queue.

persist-queue commits once per ``put`` and has no batch API, so one queue item is a
*group* of operations (see ``spoold.accept.acceptor``) and the drainer takes and acks
whole groups. Taking only reads a row and acking deletes it (``reader``), so a group's
bytes go through the WAL once, at its put. A put's commit is fsync'd; the drainer's
commits are not (``writegate.PutFirstLock``): ``ack`` fsyncs the WAL once for a round's
acks, outside the lock, before it returns. Groups taken but never acked (crash,
kill -9, close without ack) are read again at the next open: their rows are still there.
The accept path and the drainer share one transaction lock on the file (persist-queue's,
replaced by ``spoold.spool.writegate.PutFirstLock``): a put waits at most for the
drainer's transaction in progress, never for its next one; the counts have their own
short lock (``depth``).

``Spool`` opens the file and puts; it hands the rest to one piece each: the read
protocol (``reader``), the cap, the disk floor and the reserve (``capacity``),
clearing leftover rows and vacuuming (``housekeeping``), start-up repair (``repair``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

from server.sqlite.wal_sync import WalSync
from spoold.config import SPOOL_BUSY_TIMEOUT_MS
from spoold.spool import layout, prescan, repair, store, totals
from spoold.spool.capacity import Capacity
from spoold.spool.checkpoint import WalCheckpointer
from spoold.spool.codec import SpoolGroup, accepted_since, encode_group, encode_op
from spoold.spool.depth import Depth
from spoold.spool.errors import SpoolClosedError, SpoolWriteError, translate_write_error
from spoold.spool.housekeeping import Housekeeper
from spoold.spool.reader import Reader
from spoold.spool.stats import SpoolStats, age_s
from spoold.spool.writegate import PutFirstLock

log = structlog.get_logger("spoold.spool")

MiB = 1024 * 1024
#: The WAL is checkpointed after this many bytes of puts (see ``checkpoint``)...
WAL_CHECKPOINT_BYTES = MiB // 4
#: ... and after this many bytes of the drainer's deletes...
DRAIN_CHECKPOINT_BYTES = 2 * MiB
#: ... which write about this much WAL per group (its table leaf, the freelist's pages
#: and the header; the freed overflow pages themselves are not written, see
#: ``store.PRAGMAS``): ~20 KB measured for 80 KB rows.
ACK_WAL_BYTES_PER_GROUP = 5 * 4096


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
        busy_timeout_ms: int = SPOOL_BUSY_TIMEOUT_MS,
        reserve_bytes: int = 16 * MiB,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._db_path = self.directory / layout.DB_FILE
        self._io_lock = threading.Lock()  # reader side: get/ack/nack/housekeeping
        self._closed = False
        self._queue: Any = None
        self._side: Any = None
        self._checkpointer: WalCheckpointer | None = None
        self._reader: Reader | None = None
        self._depth = Depth()
        self._capacity = Capacity(
            self.directory,
            capacity_bytes=capacity_bytes,
            min_free_disk_bytes=min_free_disk_bytes,
            reserve_bytes=reserve_bytes,
        )
        self._housekeeper = Housekeeper(
            self._depth,
            self._capacity,
            clear_interval_s=clear_interval_s,
            vacuum_threshold_bytes=vacuum_threshold_bytes,
            vacuum_max_live_bytes=vacuum_max_live_bytes,
        )
        #: Where a corrupt spool file was renamed at open, if it was.
        self.quarantined_to: Path | None = None
        #: Random id of this spool file (a new file, e.g. after a corrupt one, has a new id).
        self.identity = ""
        self._put_lock = PutFirstLock()
        self._wal_sync = WalSync(self._db_path)
        #: Bytes the drainer's deletes wrote to the WAL since its last checkpoint (estimated).
        self._drain_written = 0
        # The read of every row started before the daemon's imports, if any: it holds the
        # directory's lock until here, so nothing changed the file since.
        earlier = prescan.take(self.directory)
        self._lock_fd = layout.acquire_lock(self.directory)
        try:
            layout.check_format(self.directory)
            self._queue, self._side, self.quarantined_to = store.open_queue(
                self.directory, busy_timeout_ms, earlier
            )
            totals.install(self._side)
            self._queue.tran_lock = self._put_lock  # puts first (``spoold.spool.writegate``)
            # The drainer's commits: no fsync, no checkpoint (see ``_checkpoint_drained``).
            (pages,) = self._side.execute("PRAGMA wal_autocheckpoint").fetchone()
            self._put_lock.relax(
                [*self._queue.connections, self._side], autocheckpoint_pages=int(pages)
            )
            self._checkpointer = WalCheckpointer(
                self._db_path, busy_timeout_ms, WAL_CHECKPOINT_BYTES
            )
            self.identity = store.spool_identity(self._side)
            repair.recount(self._side, self._depth)
            self._depth.published_from(store.last_allocated_id(self._side))
            self._reader = Reader(
                self._queue, self._side, self._depth, self._capacity, self._housekeeper
            )
            self._capacity.reserve.ensure()
        except BaseException:
            self.close()
            raise
        log.info(
            "spool_opened", path=str(self._db_path), ops=self._depth.ops, bytes=self._depth.bytes
        )

    @property
    def capacity_bytes(self) -> int:
        return self._capacity.capacity_bytes

    @property
    def min_free_disk_bytes(self) -> int:
        return self._capacity.min_free_disk_bytes

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
            raise translate_write_error(exc, self._capacity.retry_after_s(len(data))) from exc
        self._depth.added(item_id, len(encoded_ops), len(data), enqueued_at, publish=publish)
        self._capacity.disk.wrote(len(data))
        self._housekeeper.last_put = time.monotonic()
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
        self._depth.publish(item_id)

    def check_capacity(self, incoming_bytes: int) -> None:
        """Raise SpoolFull if ``incoming_bytes`` more would pass the cap or the disk floor."""
        self._capacity.check(self._depth.queued_bytes(), incoming_bytes)

    # -- reading (the drainer's thread) ----------------------------------------------------

    def get_groups(self, max_ops: int, max_bytes: int | None = None) -> list[SpoolGroup]:
        """Take the next groups in FIFO order, at most ``max_ops`` operations (and
        ``max_bytes`` spooled bytes, if given) in all.

        A single group larger than the bounds is still returned alone, so memory is
        bounded by one group or the bounds, whatever the backlog. While the disk
        is full (a drainer write hit it, until the spool is empty again), one group
        a round: each ack is then one small delete, as little WAL as a full disk can
        take. If a read fails after some groups were taken, those are returned: the
        caller owns them, so they are acked or given back, never stranded in flight.
        """
        if max_ops < 1:
            raise ValueError("max_ops must be >= 1")
        with self._io_lock:
            return self._open_reader().get_groups(max_ops, max_bytes)

    def ack(self, groups: Iterable[SpoolGroup]) -> None:
        """Delete delivered groups' rows; on disk when this returns.

        A commit per ``reader.ACK_CHUNK_BYTES`` of groups, none fsync'd (``PutFirstLock``),
        then one fsync of the WAL for them all, outside the put lock: a put never waits
        for the ack's flush. If that fsync fails, this and every later ack raise until a
        restart (the settle that would follow must not be made durable over an ack that
        may not be).
        """
        groups = list(groups)
        with self._io_lock:
            reader = self._open_reader()
            before = reader.deleted
            try:
                reader.ack(groups)
            finally:  # chunks committed before a failure count too
                self._drain_written += ACK_WAL_BYTES_PER_GROUP * (reader.deleted - before)
        self._sync("ack")
        self._checkpoint_drained()

    def _sync(self, step: str) -> None:
        """fsync the WAL (outside the put lock): the drainer's commits before it are on
        disk. Once an fsync failed, this fails until a restart (``WalSync``)."""
        try:
            self._wal_sync.sync()
        except OSError as exc:
            raise SpoolWriteError(f"spool {step} fsync failed: {exc}") from exc

    def _checkpoint_drained(self) -> None:
        """Copy the WAL into the database once the drainer's acks wrote
        ``DRAIN_CHECKPOINT_BYTES`` (PASSIVE, on the drainer's thread, no put lock held:
        puts go on meanwhile). Its own connection's commits never checkpoint (that copy
        would hold the put lock); in a drain without puts, a copy made here between two
        of its writes is also complete, so its next write starts the WAL over."""
        with self._io_lock:
            if self._drain_written < DRAIN_CHECKPOINT_BYTES or self._closed:
                return
            try:
                frames, copied = store.checkpoint(self._side)
            except sqlite3.Error as exc:  # the acks are done; the next ack tries again
                log.warning("spool_checkpoint_failed", error=str(exc))
                return
            if copied >= frames:  # else (a put's frames, another checkpoint): next ack
                self._drain_written = 0

    def nack(self, groups: Iterable[SpoolGroup]) -> None:
        """Give groups back; they are returned again, in their original order."""
        with self._io_lock:
            self._open_reader().nack(groups)

    def _open_reader(self) -> Reader:
        _check_open(self._closed)
        assert self._reader is not None
        return self._reader

    # -- start-up repair -------------------------------------------------------------------

    def items_after(self, item_id: int, limit: int) -> tuple[int, list[SpoolGroup]]:
        """The next ``limit`` live rows after ``item_id``: (last id scanned, their items).

        For start-up repair; undecodable rows are scanned but not returned (the
        reader sets them aside). The id is ``item_id`` when nothing follows.
        """
        with self._io_lock:
            _check_open(self._closed)
            rows = store.live_rows_after(self._side, item_id, limit)
        return repair.as_items(rows, item_id)

    def last_allocated_id(self) -> int:
        """The highest item id this spool file ever gave out (0 for a new file)."""
        with self._io_lock:
            _check_open(self._closed)
            return store.last_allocated_id(self._side)

    def raise_ids_to(self, floor: int) -> None:
        """Give out only ids above ``floor`` from now on (start-up: the runs index saw
        ids up to it, so the file is an older copy). Item ids are the drainer's snapshot
        sequences, which the server compares: they must never go back."""
        with self._io_lock, self._put_lock:
            _check_open(self._closed)
            store.raise_last_id(self._side, floor)
            self._depth.publish(floor)

    def discard(self, item_ids: Iterable[int]) -> int:
        """Delete items by id without handing them out (start-up repair: already delivered).

        Ids that are not live (acked before, or never existed) are skipped. Returns
        how many were discarded.
        """
        with self._io_lock:
            _check_open(self._closed)
            discarded = repair.discard(
                self._queue, self._side, self._capacity, self._depth, item_ids
            )
        self._sync("discard")  # on disk before the settles that follow overwrite the mark
        return discarded

    # -- housekeeping ----------------------------------------------------------------------

    def housekeep_when_idle(self) -> None:
        """Delete acked rows and vacuum, if no put came for a while (the drainer calls
        this when it has nothing to send; a vacuum would make a writer wait)."""
        with self._io_lock:
            if self._closed:
                return
            self._housekeeper.when_idle(self._queue, self._side)

    # -- state -----------------------------------------------------------------------------

    def queued_bytes(self) -> int:
        """Serialised bytes of the groups not yet acknowledged (what the cap counts)."""
        return self._depth.queued_bytes()

    def queued(self) -> tuple[int, int]:
        """(operations, bytes) waiting to be drained (in memory, no I/O)."""
        ops, _, nbytes, _ = self._depth.snapshot()
        return ops, nbytes

    def stats(self) -> SpoolStats:
        """A snapshot of depth, size and age (no disk I/O beyond a cached statvfs)."""
        ops, groups, nbytes, oldest = self._depth.snapshot()
        try:
            free: int | None = self._capacity.disk.free_bytes()
        except OSError:
            free = None
        return SpoolStats(
            depth_ops=ops,
            depth_groups=groups,
            inflight_groups=0 if self._reader is None else len(self._reader.inflight),
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
                self._housekeeper.maintain(self._queue, self._side)
                self._queue.close()
                self._queue = None
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            if self._side is not None:
                self._side.close()
                self._side = None
            self._wal_sync.close()
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
