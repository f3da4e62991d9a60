"""The spool's disk reserve, and a read cut short by a failed read."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import disk_full

from spoold.spool import Spool, store
from spoold.spool.reserve import MIN_BYTES, RESERVE_FILE, DiskReserve


def _op(n: int) -> dict[str, Any]:
    return {"kind": "create", "event_id": f"e{n}", "body": {"event_id": f"e{n}"}}


def test_reserve_is_real_bytes_and_given_back_once(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path, max_bytes=MIN_BYTES * 2)
    reserve.ensure()
    path = tmp_path / RESERVE_FILE
    assert path.stat().st_size == MIN_BYTES * 2
    assert path.stat().st_blocks * 512 >= MIN_BYTES * 2  # allocated, not a sparse file
    assert reserve.release() is True
    assert not path.exists()
    assert reserve.release() is False
    reserve.ensure()
    assert path.exists()


def test_reserve_is_skipped_when_disabled(tmp_path: Path) -> None:
    DiskReserve(tmp_path, max_bytes=0).ensure()
    assert not (tmp_path / RESERVE_FILE).exists()


def test_a_full_disk_on_ack_releases_the_reserve_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Spool(tmp_path, reserve_bytes=MIN_BYTES) as spool:
        spool.put_group([_op(1)])
        spool.put_group([_op(2)])
        assert (tmp_path / RESERVE_FILE).exists()
        groups = spool.get_groups(1)
        real_delete = store.delete_rows
        calls: list[list[int]] = []

        def delete_full_once(queue: Any, side: Any, ids: list[int]) -> int:
            calls.append(list(ids))
            if len(calls) == 1:
                raise disk_full()
            return real_delete(queue, side, ids)

        monkeypatch.setattr(store, "delete_rows", delete_full_once)
        spool.ack(groups)
        assert calls == [[groups[0].id], [groups[0].id]]
        assert not (tmp_path / RESERVE_FILE).exists()  # given back; one group still queued
        spool.ack(spool.get_groups(10))
        assert spool.stats().depth_ops == 0
        assert (tmp_path / RESERVE_FILE).exists()  # drained: made again


def test_a_read_cut_short_returns_the_groups_already_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Spool(tmp_path, reserve_bytes=0) as spool:
        for n in range(3):
            spool.put_group([_op(n)])
        real_read = store.next_live_row
        taken: list[int] = []

        def read_then_fail(side: Any, after: int, skip: Any = ()) -> Any:
            if len(taken) == 2:
                raise sqlite3.OperationalError("disk I/O error")
            row = real_read(side, after, skip)
            taken.append(row[0])
            return row

        monkeypatch.setattr(store, "next_live_row", read_then_fail)
        groups = spool.get_groups(10)
        assert [g.ops[0]["event_id"] for g in groups] == ["e0", "e1"]
        monkeypatch.setattr(store, "next_live_row", real_read)
        spool.ack(groups)  # owned by the caller: acked, not stranded in flight
        rest = spool.get_groups(10)
        assert [g.ops[0]["event_id"] for g in rest] == ["e2"]
        spool.ack(rest)
        assert spool.stats().depth_ops == 0
