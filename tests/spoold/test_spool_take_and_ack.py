"""Taking a group only reads its row; acking deletes it; nothing else rewrites it.

persist-queue's ``get`` and ``ack`` each rewrote the whole row to change its status,
and Debian's SQLite (built with SECURE_DELETE) zeroed every freed page through the WAL
as well: ~440 KB of WAL per 80 KB group, all of it under the lock the agents' puts wait
on. The spool now reads rows with its own cursor, deletes a delivered group's row at
its ack (``reader.ACK_CHUNK_BYTES`` per transaction) and runs with
``secure_delete=FAST``; a crash between take and ack leaves the row to be read again.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from persistqueue.sqlackqueue import AckStatus
from spool_helpers import SpoolFactory, all_seqs, disk_full, op

from spoold.spool import Spool, layout, reader, store

KiB = 1024


def rows(spool_dir: Path) -> tuple[int, int]:
    """(rows in the table, of which not live), read on a connection of its own."""
    with contextlib.closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        total, gone = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(status >= {int(AckStatus.acked)}), 0)"
            f" FROM {store.TABLE}"
        ).fetchone()
    return int(total), int(gone)


def wal_bytes(spool_dir: Path) -> int:
    wal = spool_dir / f"{layout.DB_FILE}-wal"
    return wal.stat().st_size if wal.exists() else 0


def truncate_wal(spool: Spool) -> None:
    """Empty the WAL (the spool's own checkpoint thread may be busy with it a moment)."""
    for _ in range(100):
        ((busy, _, _),) = spool._side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if busy == 0 and wal_bytes(spool.directory) == 0:
            return
        time.sleep(0.01)
    raise AssertionError("the spool's WAL could not be truncated")


def counted_deletes(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The id lists of every delete transaction the spool makes."""
    calls: list[list[int]] = []
    real: Callable[..., int] = store.delete_rows

    def counted(queue: Any, side: Any, ids: list[int]) -> int:
        calls.append(list(ids))
        return real(queue, side, ids)

    monkeypatch.setattr(store, "delete_rows", counted)
    return calls


def test_taking_groups_writes_nothing(make_spool: SpoolFactory, spool_dir: Path) -> None:
    spool = make_spool(capacity_bytes=64 * 1024 * KiB)
    for i in range(6):
        spool.put_group([op(i, size=40_000)])
    truncate_wal(spool)
    got = spool.get_groups(100)
    assert [o["seq"] for g in got for o in g.ops] == list(range(6))
    assert wal_bytes(spool_dir) == 0
    assert rows(spool_dir) == (6, 0)


def test_an_ack_deletes_the_rows_in_small_transactions(
    make_spool: SpoolFactory, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "ACK_CHUNK_BYTES", 90_000)
    deletes = counted_deletes(monkeypatch)
    spool = make_spool(capacity_bytes=64 * 1024 * KiB)
    ids = [spool.put_group([op(i, size=40_000)]) for i in range(12)]  # ~40 KB rows
    spool.ack(spool.get_groups(5))
    assert deletes == [ids[0:3], ids[3:5]]  # ~90 KB (3 rows) a transaction, then 2
    assert rows(spool_dir) == (7, 0)
    assert spool.stats().depth_ops == 7
    assert all_seqs(spool) == list(range(5, 12))


def test_an_ack_writes_a_small_share_of_the_groups_bytes(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    """secure_delete=FAST: the freed overflow pages are not zeroed through the WAL (with
    Debian's default, ON, deleting 80 KB rows wrote ~100 KB of WAL each)."""
    spool = make_spool(capacity_bytes=64 * 1024 * KiB)
    for i in range(20):
        spool.put_group([op(i, size=80_000)])
    truncate_wal(spool)
    spool._side.execute("PRAGMA wal_autocheckpoint = 0")
    for _ in range(20):
        spool.ack(spool.get_groups(1))
    assert spool.stats().depth_ops == 0
    assert wal_bytes(spool_dir) < 20 * 40 * KiB  # ~20 KiB each measured; 100+ if zeroed


def test_every_spool_connection_deletes_fast(make_spool: SpoolFactory) -> None:
    spool = make_spool()
    conns = [*spool._queue.connections, spool._side]
    assert [int(c.execute("PRAGMA secure_delete").fetchone()[0]) for c in conns] == [2] * len(
        conns
    )  # 2 is FAST


def test_groups_taken_but_not_acked_are_read_again_after_a_crash(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    spool = make_spool()
    for i in range(4):
        spool.put_group([op(i)])
    spool.ack(spool.get_groups(1))
    spool.get_groups(2)  # taken, then the process dies (close without ack)
    spool.close()
    assert rows(spool_dir) == (3, 0)
    reopened = make_spool()
    assert reopened.stats().depth_ops == 3
    assert all_seqs(reopened) == [1, 2, 3]


def test_a_nack_hands_the_groups_out_again_in_order_and_skips_those_in_flight(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    spool = make_spool()
    ids = [spool.put_group([op(2 * k), op(2 * k + 1)]) for k in range(5)]
    first = spool.get_groups(2)
    second = spool.get_groups(3)  # the next group does not fit: read, held back
    truncate_wal(spool)
    spool.nack(first)  # the second take stays in flight
    assert wal_bytes(spool_dir) == 0  # a nack writes nothing
    again = spool.get_groups(100)
    assert [g.id for g in second] == [ids[1]]
    assert [g.id for g in again] == [ids[0], ids[2], ids[3], ids[4]]
    seqs = [o["seq"] for g in again for o in g.ops]
    assert seqs == [0, 1, 4, 5, 6, 7, 8, 9]  # the second take's group (2, 3) not twice
    spool.ack(second)
    spool.ack(again)
    assert spool.stats().depth_ops == 0
    assert rows(spool_dir) == (0, 0)


def test_an_ack_of_a_group_not_in_flight_deletes_nothing(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    spool = make_spool()
    groups = [spool.put_group([op(i)]) for i in range(3)]
    got = spool.get_groups(1)
    spool.nack(got)
    spool.ack(got)  # given back first: not the caller's any more
    assert rows(spool_dir) == (3, 0)
    assert spool.stats().depth_ops == 3
    assert [g.id for g in spool.get_groups(100)] == groups


def test_rows_acked_by_an_older_spoold_go_with_the_scan_once_the_spool_is_empty(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    """A spool file from before the deletes at ack holds rows marked acked: the totals
    skip them and the scanning clear deletes them when the spool is empty."""
    spool = make_spool()
    for i in range(4):
        spool.put_group([op(i)])
    spool._queue.ack(id=1)  # as persist-queue's ack left them
    spool._queue.ack(id=2)
    spool.close()
    assert rows(spool_dir) == (4, 2)
    reopened = make_spool()
    assert reopened.stats().depth_ops == 2
    reopened.ack(reopened.get_groups(10))
    assert rows(spool_dir) == (0, 0)


@pytest.mark.parametrize(
    ("failure", "failed_calls"),
    [
        (disk_full, 2),  # the write, and its retry once the reserve is given back
        (lambda: PermissionError(13, "reserve file"), 1),  # giving the reserve back failed
    ],
)
def test_a_failed_set_aside_keeps_the_row_and_strands_nothing(
    failure: Callable[[], Exception],
    failed_calls: int,
    make_spool: SpoolFactory,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Setting an undecodable row aside is the one write of a take: if it fails, the groups
    read before it are still handed out, the bad row is tried again at the next read, and
    the groups behind it follow; nothing stays in flight that the caller does not hold."""
    spool = make_spool()
    first = spool.put_group([op(1)])
    with contextlib.closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn, conn:
        conn.execute(
            f"INSERT INTO {store.TABLE} (data, timestamp, status) VALUES (?, ?, 1)",
            (b"{oops", 0.0),
        )
    third = spool.put_group([op(3)])
    real = spool._queue.ack_failed
    calls: list[int] = []

    def fails_at_first(**kwargs: Any) -> Any:
        calls.append(kwargs["id"])
        if len(calls) <= failed_calls:
            raise failure()
        return real(**kwargs)

    monkeypatch.setattr(spool._queue, "ack_failed", fails_at_first)
    got = spool.get_groups(100)
    assert [g.id for g in got] == [first]  # cut short before the bad row
    spool.ack(got)
    rest = spool.get_groups(100)
    assert [g.id for g in rest] == [third]
    assert len(calls) == failed_calls + 1  # the bad row tried again, then set aside
    spool.ack(rest)
    assert spool.stats().inflight_groups == 0
    assert spool.get_groups(100) == []


def test_rows_in_flight_are_skipped_after_a_nack_without_reading_them(
    make_spool: SpoolFactory,
) -> None:
    spool = make_spool(capacity_bytes=64 * 1024 * KiB)
    for i in range(4):
        spool.put_group([op(i, size=200_000)])
    first = spool.get_groups(1)
    held = spool.get_groups(2)  # stays in flight through the nack
    statements: list[str] = []
    spool._side.set_trace_callback(statements.append)
    spool.nack(first)
    again = spool.get_groups(100)
    spool._side.set_trace_callback(None)
    assert [o["seq"] for g in again for o in g.ops] == [0, 3]
    assert [o["seq"] for g in held for o in g.ops] == [1, 2]
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT _ID, DATA")]
    assert len(reads) == 3  # row 0, row 3, then none: rows 1 and 2 never read
