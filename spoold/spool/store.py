"""persist-queue's SQLite file: opening it (with corruption recovery) and looking inside.

persist-queue creates the file and its table, and makes every put, vacuum and scanning
clear. Next to it the spool keeps one plain "side" connection to the same file for what
its API cannot do cheaply: reading every live row at open (a damaged file is found before
anything is accepted; the live totals are checked then, ``spoold.spool.totals``), taking
rows and deleting delivered ones (persist-queue's ``get`` and ``ack`` each rewrite the
whole row to change its status: twice the group's bytes through the WAL, under the put
lock, see ``spoold.spool.reader``), the oldest live group, the free-page count and a
WAL truncation after a vacuum.

Every connection to the file, persist-queue's own included, is set to
``synchronous=FULL``: in WAL mode that fsyncs the WAL at every commit, which is
what makes a put durable when it returns. The SQLite build's default is not relied
on (builds differ: some default WAL files to NORMAL). The drainer's transactions
(deletes of delivered rows, clean-up) are switched to NORMAL while they hold the put lock
(``spoold.spool.writegate.PutFirstLock``); an ack is made durable by ``Spool.ack``'s
fsync of the WAL before it returns.
"""

from __future__ import annotations

import gc
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog
from persistqueue.sqlackqueue import AckStatus, SQLiteAckQueue

from server.sqlite.connect import connect
from server.sqlite.errors import is_corruption
from spoold.config import SPOOL_BUSY_TIMEOUT_MS
from spoold.spool import layout, totals
from spoold.spool.codec import (
    HEADER_BYTES,
    DecodedGroup,
    GroupSerializer,
    decode_group,
    parse_header,
)
from spoold.spool.errors import SpoolWriteError
from spoold.spool.stats import SpoolStats, age_s

log = structlog.get_logger("spoold.spool")

QUEUE_NAME = "spool"
TABLE = f'"ack_queue_{QUEUE_NAME}"'  # persist-queue names its table ack_queue_<name>
_LIVE = f"status < {int(AckStatus.acked)}"  # inited, ready, or unack (older spoolds)
_OLDEST_SQL = (
    f"SELECT substr(data, 1, {HEADER_BYTES}) FROM {TABLE} WHERE {_LIVE} ORDER BY _id LIMIT 1"
)
#: A put rolled back at open: AUTOINCREMENT reads sqlite_sequence, whose damage SQLite
#: reports only then (SQLITE_CORRUPT_SEQUENCE), not to reads or integrity checks.
_PROBE_PUT_SQL = (
    f"INSERT INTO {TABLE} (data, timestamp, status) VALUES (x'', 0, {int(AckStatus.acked)})"
)
SYNCHRONOUS = "FULL"
#: Debian's SQLite is built with SECURE_DELETE: every deleted row's bytes would be
#: overwritten with zeros, through the WAL, once more (a delivered group's whole size,
#: under the put lock). FAST zeroes only what is written anyway (the row's own page);
#: a delivered group's other pages keep their bytes until reused or vacuumed, on a
#: disk that holds them until delivery anyway.
PRAGMAS = ("secure_delete = FAST",)
_NEXT_LIVE_SQL = (
    f"SELECT _id, data FROM {TABLE} WHERE {_LIVE} AND _id > ?"
    " AND _id NOT IN (SELECT value FROM json_each(?)) ORDER BY _id LIMIT 1"
)
_DELETE_SQL = f"DELETE FROM {TABLE} WHERE _id IN (SELECT value FROM json_each(?))"


class DurableAckQueue(SQLiteAckQueue):
    """persist-queue's SQLiteAckQueue whose every connection commits with synchronous=FULL
    (the drainer's transactions switch to NORMAL inside the put lock, see above).

    ``_new_db_connection`` is the factory persist-queue calls for each of its
    connections (the getter, and the putter with ``multithreading``). It is replaced by
    the daemons' one recipe with persist-queue's own settings (WAL, sqlite3's implicit
    transactions, its timeout) plus synchronous=FULL; the connections made are kept in
    ``connections`` so tests can read the setting back.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections: list[sqlite3.Connection] = []
        super().__init__(*args, **kwargs)

    def _new_db_connection(
        self, path: str, multithreading: bool, timeout: float
    ) -> sqlite3.Connection:
        conn = connect(
            Path(path) / self.db_file_name,
            busy_timeout_ms=round(timeout * 1000),
            journal_mode="WAL",
            synchronous=SYNCHRONOUS,
            pragmas=PRAGMAS,
            implicit_transactions=True,
        )
        self.connections.append(conn)
        return conn


def open_queue(
    directory: Path, busy_timeout_ms: int, earlier: totals.Scan | None = None
) -> tuple[Any, sqlite3.Connection, Path | None]:
    """Open the queue and its side connection; rename a corrupt file aside once.

    ``earlier``: a read of every live row made before the open (``prescan``), used in
    place of the open's own if the rows are still the ones it read. The third value is
    where the corrupt file went, or None.
    """
    db_path = directory / layout.DB_FILE
    try:
        return (*_open_once(directory, busy_timeout_ms, earlier), None)
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise SpoolWriteError(f"cannot open spool {db_path}: {exc}") from exc
        error, code = str(exc), getattr(exc, "sqlite_errorname", None)
    gc.collect()  # let the half-built queue close its connections before the rename
    moved = layout.quarantine(db_path)
    log.warning(
        "spool_corrupt_renamed", path=str(db_path), renamed_to=str(moved), error=error, code=code
    )
    return (*_open_once(directory, busy_timeout_ms, None), moved)


def _open_once(
    directory: Path, busy_timeout_ms: int, earlier: totals.Scan | None
) -> tuple[Any, sqlite3.Connection]:
    queue = DurableAckQueue(
        str(directory),
        name=QUEUE_NAME,
        db_file_name=layout.DB_FILE,
        multithreading=True,  # the accept thread puts, the drainer's thread gets
        auto_commit=True,
        auto_resume=True,  # rows an older spoold marked taken (unack): ready again
        serializer=GroupSerializer,
        timeout=busy_timeout_ms / 1000,  # persist-queue's unit; back to ms in the factory
    )
    side: sqlite3.Connection | None = None
    try:
        side = connect_side(directory / layout.DB_FILE, busy_timeout_ms)
        # Reads every live row before anything is accepted: surfaces corruption now.
        if totals.installed(side):
            verified = totals.verify(side, earlier)  # and puts kept totals that drifted right
            if verified.corrected is not None:
                groups, nbytes, ops = verified.corrected
                log.error("spool_totals_corrected", groups=groups, bytes=nbytes, ops=ops)
            log.info("spool_rows_read", earlier_read_used=verified.earlier_scan_used)
        else:
            totals.count(side)
        _probe_put(side)
    except BaseException:
        if side is not None:
            side.close()
        queue.close()
        raise
    return queue, side


def _probe_put(side: sqlite3.Connection) -> None:
    """Try a put and roll it back, so a damaged sqlite_sequence is found at open."""
    side.execute("BEGIN IMMEDIATE")
    try:
        side.execute(_PROBE_PUT_SQL)
    finally:
        side.execute("ROLLBACK")


def spool_identity(side: sqlite3.Connection) -> str:
    """This spool file's random id, made when the file is: a replaced file has a new one.

    Kept in a one-row table of spoold's own beside persist-queue's.
    """
    side.execute("CREATE TABLE IF NOT EXISTS spoold_identity (spool_id TEXT NOT NULL)")
    row = side.execute("SELECT spool_id FROM spoold_identity LIMIT 1").fetchone()
    if row is not None:
        return str(row[0])
    spool_id = uuid.uuid4().hex
    side.execute("INSERT INTO spoold_identity (spool_id) VALUES (?)", (spool_id,))
    side.commit()
    return spool_id


def oldest_enqueued_at(side: sqlite3.Connection) -> float | None:
    """Enqueue time stored in the oldest live group."""
    rows = side.execute(_OLDEST_SQL).fetchall()
    header = parse_header(bytes(rows[0][0])) if rows else None
    return header[1] if header else None


def last_allocated_id(side: sqlite3.Connection) -> int:
    """The largest id the queue's AUTOINCREMENT ever handed out (kept after deletes)."""
    row = side.execute(
        "SELECT seq FROM sqlite_sequence WHERE name = ?", (TABLE.strip('"'),)
    ).fetchone()
    return int(row[0]) if row is not None else 0


def raise_last_id(side: sqlite3.Connection, floor: int) -> None:
    """Make the queue's AUTOINCREMENT hand out ids above ``floor`` from now on."""
    name = TABLE.strip('"')
    updated = side.execute(
        "UPDATE sqlite_sequence SET seq = ? WHERE name = ? AND seq < ?", (floor, name, floor)
    ).rowcount
    if not updated and last_allocated_id(side) < floor:  # no row yet: nothing was ever put
        side.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, floor))
    side.commit()


def live_rows_after(
    side: sqlite3.Connection, item_id: int, limit: int
) -> list[tuple[int, DecodedGroup]]:
    """(id, decoded group) of up to ``limit`` live rows with an id above ``item_id``."""
    rows = side.execute(
        f"SELECT _id, data FROM {TABLE} WHERE {_LIVE} AND _id > ? ORDER BY _id LIMIT ?",
        (item_id, limit),
    ).fetchall()
    return [(int(pqid), decode_group(bytes(data))) for pqid, data in rows]


def live_ids(side: sqlite3.Connection, item_ids: Iterable[int]) -> list[int]:
    """The ids among ``item_ids`` whose rows are still live, ascending."""
    wanted = sorted(set(item_ids))
    live: list[int] = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        live += [
            int(pqid)
            for (pqid,) in side.execute(
                f"SELECT _id FROM {TABLE} WHERE {_LIVE} AND _id IN ({marks}) ORDER BY _id", chunk
            )
        ]
    return live


def clear_acked(queue: Any) -> None:
    """Delete every acked (and undecodable, ack_failed) row.

    ``max_delete=0, keep_latest=0`` means no LIMIT and no OFFSET: the defaults
    (1000/1000) would keep the latest thousand acked rows forever.
    """
    queue.clear_acked_data(max_delete=0, keep_latest=0, clear_ack_failed=True)


def next_live_row(
    side: sqlite3.Connection, after: int, skip: Sequence[int] = ()
) -> tuple[int, bytes] | None:
    """(id, data) of the first live row with an id above ``after`` and not in ``skip``, or
    None. A read only: taking a group does not mark (rewrite) its row, see
    ``spoold.spool.reader``."""
    params = (after, orjson.dumps(list(skip)).decode())
    rows = side.execute(_NEXT_LIVE_SQL, params).fetchall()  # all: ends the read
    if not rows:
        return None
    pqid, data = rows[0]
    return int(pqid), bytes(data)


def delete_rows(queue: Any, side: sqlite3.Connection, ids: Sequence[int]) -> int:
    """Delete the rows of ``ids`` (delivered groups) by primary key, in one transaction
    under the queue's write lock; how many went. The totals' trigger counts a live row
    out in the same transaction."""
    with queue.tran_lock:  # the put-first lock: commits without fsync (see Spool.ack)
        try:
            cursor = side.execute(_DELETE_SQL, (orjson.dumps(list(ids)).decode(),))
            side.commit()
        except BaseException:
            side.rollback()
            raise
    return int(cursor.rowcount)


def free_page_bytes(side: sqlite3.Connection) -> int:
    """Bytes of the file held by free pages (reused by later writes, or vacuumed)."""
    (free_pages,) = side.execute("PRAGMA freelist_count").fetchone()
    (page_size,) = side.execute("PRAGMA page_size").fetchone()
    return int(free_pages) * int(page_size)


def housekeep(queue: Any, side: Any, vacuum_threshold: int | None) -> None:
    """Delete acked rows; vacuum if free pages reach ``vacuum_threshold`` bytes.

    The vacuum rebuilds the file without its free pages (rowids, hence in-flight
    ids, are kept: ``_id`` is an INTEGER PRIMARY KEY), then truncates the WAL
    that the rebuild filled.
    """
    clear_acked(queue)
    if vacuum_threshold is None or side is None:
        return
    free = free_page_bytes(side)
    if free >= vacuum_threshold:
        queue.shrink_disk_usage()
        truncate_wal(side)
        log.info("spool_vacuumed", freed_bytes=free)


def connect_side(db_path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """A plain connection to the queue's file, for reads and checkpoints."""
    return connect(
        db_path,
        busy_timeout_ms=busy_timeout_ms,
        synchronous=SYNCHRONOUS,
        pragmas=PRAGMAS,
        implicit_transactions=True,
    )


def checkpoint(conn: sqlite3.Connection) -> tuple[int, int]:
    """Copy what the WAL holds into the database without waiting on anyone (PASSIVE);
    (frames in the WAL, frames of it copied so far): (0, 0) when not in WAL mode or
    when another checkpoint holds the lock (SQLite answers -1 for both)."""
    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return (max(int(row[1]), 0), max(int(row[2]), 0)) if row else (0, 0)


def truncate_wal(side: sqlite3.Connection) -> None:
    """Checkpoint the WAL into the database and truncate it to zero bytes."""
    side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def inspect_spool(directory: Path, capacity_bytes: int = 0) -> SpoolStats:
    """Read-only snapshot of a spool directory, usable while a daemon owns it (CLI)."""
    db_path = directory / layout.DB_FILE
    groups = nbytes = ops = 0
    oldest: float | None = None
    if db_path.exists():
        conn = connect(db_path, busy_timeout_ms=SPOOL_BUSY_TIMEOUT_MS, read_only=True)
        try:
            if conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = ?", (TABLE.strip('"'),)
            ).fetchall():
                groups, nbytes, ops = totals.count(conn)
                oldest = oldest_enqueued_at(conn)
        finally:
            conn.close()
    return SpoolStats(
        depth_ops=ops,
        depth_groups=groups,
        inflight_groups=0,
        bytes=nbytes,
        capacity_bytes=capacity_bytes,
        file_bytes=layout.file_bytes(db_path),
        disk_free_bytes=None,
        min_free_disk_bytes=0,
        oldest_enqueued_at=oldest,
        oldest_age_s=age_s(oldest, time.time()),
    )
