"""Acked rows deleted by id, in small transactions, while other rows are queued.

persist-queue's clear scans the table from its newest row down to the acked ones,
holding the write lock the agents' puts wait on: with a big backlog that scan alone took
~8 ms per clear. While rows are queued the spool deletes the rows it acked by primary
key instead, ``CLEAR_CHUNK_BYTES`` per transaction; the scanning clear still runs when
the spool is empty, and catches what the deletes by id could not know.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from persistqueue.sqlackqueue import AckStatus
from spool_helpers import SpoolFactory, op

from spoold.spool import Spool, housekeeping, layout, store


def rows(spool_dir: Path) -> tuple[int, int]:
    """(rows in the table, of which acked), read on a connection of its own."""
    with contextlib.closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        total, acked = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(status = {int(AckStatus.acked)}), 0) FROM {store.TABLE}"
        ).fetchone()
    return int(total), int(acked)


def trace_side(spool: Spool) -> list[str]:
    statements: list[str] = []
    spool._side.set_trace_callback(statements.append)
    return statements


def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of the scanning clear (persist-queue's)."""
    called: list[int] = []
    real: Callable[..., None] = store.clear_acked

    def counted(queue: Any) -> None:
        called.append(1)
        real(queue)

    monkeypatch.setattr(store, "clear_acked", counted)
    return called


def test_acked_rows_go_by_id_in_small_transactions_while_others_are_queued(
    make_spool: SpoolFactory, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "CLEAR_EVERY_BYTES", 200_000)
    monkeypatch.setattr(housekeeping, "CLEAR_CHUNK_BYTES", 90_000)
    scanned = scans(monkeypatch)
    spool = make_spool(capacity_bytes=64 * 1024 * 1024)
    for i in range(12):
        spool.put_group([op(i, size=40_000)])  # ~40 KB rows
    statements = trace_side(spool)
    for _ in range(6):  # half of them: ~240 KB acked, one clear due
        spool.ack(spool.get_groups(1))
    spool._side.set_trace_callback(None)
    # (the trace repeats a statement for each trigger it fires)
    deletes = [s for s in statements if s.lstrip().upper().startswith("DELETE")]
    assert scanned == []
    assert len(set(deletes)) == 2  # 5 rows due: ~90 KB (3 rows) a transaction, then 2
    total, acked = rows(spool_dir)
    assert total == 12 - 6 + acked  # only acked rows went
    assert acked <= 1  # what is left waits for the next clear
    assert spool.stats().depth_ops == 6
    remaining = [o["seq"] for g in spool.get_groups(100) for o in g.ops]
    assert remaining == list(range(6, 12))


def test_a_live_row_is_never_deleted_by_id(make_spool: SpoolFactory, spool_dir: Path) -> None:
    spool = make_spool()
    first = spool.put_group([op(1)])
    second = spool.put_group([op(2)])
    groups = spool.get_groups(1)
    assert [g.id for g in groups] == [first]
    spool.ack(groups)
    deleted = store.delete_acked(spool._queue, spool._side, [first, second, second + 99])
    assert deleted <= 1  # the acked one, unless a clear took it already
    assert rows(spool_dir) == (1, 0)
    assert [o["seq"] for g in spool.get_groups(10) for o in g.ops] == [2]


def test_rows_acked_before_a_restart_go_with_the_scan_once_the_spool_is_empty(
    make_spool: SpoolFactory, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "CLEAR_EVERY_BYTES", 10**9)  # no clear before the stop
    spool = make_spool()
    for i in range(4):
        spool.put_group([op(i)])
    spool.ack(spool.get_groups(2))
    spool.close()
    assert rows(spool_dir) == (4, 2)  # acked, not deleted
    reopened = make_spool()
    scanned = scans(monkeypatch)
    reopened.ack(reopened.get_groups(10))  # the spool is empty: the scanning clear runs
    assert scanned == [1]
    assert rows(spool_dir) == (0, 0)
