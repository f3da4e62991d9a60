"""The spool's pieces on their own: the in-memory counts (``depth``) and the cap, floor and
reserve (``capacity``), without a queue around them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from spool_helpers import disk_full

from spoold.spool import SpoolFull
from spoold.spool.capacity import Capacity
from spoold.spool.depth import Depth
from spoold.spool.reserve import MIN_BYTES, RESERVE_FILE


def test_depth_counts_what_was_put_until_it_is_forgotten() -> None:
    """Puts add groups, operations and bytes; forgetting takes them off; the oldest time
    is the first put's, and shows only while something is queued."""
    depth = Depth()
    depth.added(1, 3, 300, 10.0, publish=True)
    depth.added(2, 1, 100, 20.0, publish=True)
    assert depth.snapshot() == (4, 2, 400, 10.0)
    depth.forget(3, 300)
    depth.forget(1, 100)
    assert depth.snapshot() == (0, 0, 0, None)


def test_depth_hands_out_only_published_items_and_never_goes_back() -> None:
    """An item put unpublished is not handed out until published; an older publish
    arriving late does not take the mark back."""
    depth = Depth()
    depth.added(1, 1, 10, 1.0, publish=True)
    depth.added(2, 1, 10, 2.0, publish=False)
    assert depth.published() == 1
    depth.publish(2)
    depth.publish(1)
    assert depth.published() == 2


def test_a_put_during_the_acks_read_of_the_oldest_is_not_hidden() -> None:
    """The ack reads the oldest live group from the file; a put that lands after that read
    began keeps its time even though the read found the file empty."""
    depth = Depth()
    depth.added(1, 1, 10, 5.0, publish=True)
    depth.forget(1, 10)
    depth.reading_oldest()
    depth.added(2, 1, 10, 7.0, publish=True)  # lands while the ack reads
    depth.after_ack(None)  # what the read saw: nothing
    assert depth.snapshot() == (1, 1, 10, 7.0)


def test_capacity_refuses_past_the_cap_and_under_the_floor(tmp_path: Path) -> None:
    """Past the byte cap or below the free-disk floor a write is SpoolFull with a
    Retry-After; within both it passes."""
    capacity = Capacity(tmp_path, capacity_bytes=1000, min_free_disk_bytes=0, reserve_bytes=0)
    capacity.check(queued_bytes=900, incoming_bytes=100)
    with pytest.raises(SpoolFull) as full:
        capacity.check(queued_bytes=900, incoming_bytes=101)
    assert full.value.retry_after_s > 0
    floor = Capacity(tmp_path, capacity_bytes=1 << 40, min_free_disk_bytes=1 << 60, reserve_bytes=0)
    with pytest.raises(SpoolFull, match="free disk below the floor"):
        floor.check(queued_bytes=0, incoming_bytes=1)


def test_a_reader_write_on_a_full_disk_gives_the_reserve_back_and_retries_once(
    tmp_path: Path,
) -> None:
    """The first disk-full error releases the reserve and the write goes again; once the
    spool has drained the reserve is made again and the disk is no longer tight."""
    capacity = Capacity(
        tmp_path, capacity_bytes=1 << 20, min_free_disk_bytes=0, reserve_bytes=MIN_BYTES
    )
    capacity.reserve.ensure()
    assert (tmp_path / RESERVE_FILE).exists()
    calls: list[int] = []

    def ack() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise disk_full()
        return "acked"

    assert capacity.when_full_retry(ack) == "acked"
    assert len(calls) == 2
    assert capacity.disk_tight
    assert not (tmp_path / RESERVE_FILE).exists()
    capacity.drained()
    assert (tmp_path / RESERVE_FILE).exists()
    assert not capacity.disk_tight


def test_other_write_errors_keep_the_reserve(tmp_path: Path) -> None:
    """Only a full disk spends the reserve: any other error is raised as it is."""
    capacity = Capacity(
        tmp_path, capacity_bytes=1 << 20, min_free_disk_bytes=0, reserve_bytes=MIN_BYTES
    )
    capacity.reserve.ensure()

    def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        capacity.when_full_retry(locked)
    assert (tmp_path / RESERVE_FILE).exists()
    assert not capacity.disk_tight
