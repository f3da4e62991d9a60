"""Spool: FIFO groups, crash resume, acked rows cleared, counts, cap, corruption, format."""

from __future__ import annotations

import sqlite3
import time
import tracemalloc
from contextlib import closing
from pathlib import Path

import orjson
import pytest
from spool_helpers import SpoolFactory, all_seqs, op
from structlog.testing import capture_logs

from spoold.spool import (
    Spool,
    SpoolClosedError,
    SpoolFormatError,
    SpoolFull,
    SpoolLockedError,
    housekeeping,
    inspect_spool,
)
from spoold.spool.store import TABLE


def put_groups(spool: Spool, n_groups: int, per_group: int, size: int = 0) -> None:
    """Append n_groups groups of per_group ops with consecutive seqs."""
    seq = 0
    for _ in range(n_groups):
        spool.put_group([op(seq + k, size) for k in range(per_group)])
        seq += per_group


def rows(spool_dir: Path) -> int:
    with closing(sqlite3.connect(spool_dir / "spool.db")) as conn, conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])


def test_groups_come_back_in_fifo_order(make_spool: SpoolFactory) -> None:
    """Operations are read back in the order their groups were put, across calls."""
    spool = make_spool()
    put_groups(spool, 20, 7)
    assert all_seqs(spool, max_ops=10) == list(range(140))


def test_get_groups_respects_max_ops_and_keeps_order(make_spool: SpoolFactory) -> None:
    """A group that does not fit is held for the next call, which starts with it."""
    spool = make_spool()
    put_groups(spool, 5, 10)
    first = spool.get_groups(35)
    assert [len(g.ops) for g in first] == [10, 10, 10]
    second = spool.get_groups(100)
    assert [g.ops[0]["seq"] for g in second] == [30, 40]


def test_oversized_group_is_returned_alone(make_spool: SpoolFactory) -> None:
    """One group larger than max_ops is still delivered, so the drain cannot stall."""
    spool = make_spool()
    put_groups(spool, 2, 50)
    assert [len(g.ops) for g in spool.get_groups(10)] == [50]


def test_nack_returns_groups_in_original_order(make_spool: SpoolFactory) -> None:
    """Nacked groups (and one held back) are read again before anything newer."""
    spool = make_spool()
    put_groups(spool, 6, 10)
    got = spool.get_groups(25)  # two groups handed out, the third held back
    spool.nack(got)
    assert all_seqs(spool) == list(range(60))


def test_unacked_groups_come_back_after_crash(make_spool: SpoolFactory, spool_dir: Path) -> None:
    """Groups got but not acked before the process ends are returned again on reopen."""
    spool = make_spool()
    put_groups(spool, 4, 5)
    got = spool.get_groups(10)
    spool.ack(got[:1])
    spool.close()  # no ack for got[1]: as after a crash
    reopened = make_spool()
    assert reopened.stats().depth_ops == 15
    assert all_seqs(reopened) == list(range(5, 20))


def test_counts_are_recomputed_at_open(make_spool: SpoolFactory) -> None:
    """depth_ops, depth_groups, bytes and the oldest time survive a restart exactly."""
    spool = make_spool()
    before = time.time()
    put_groups(spool, 3, 4, size=100)
    spool.ack(spool.get_groups(4))
    stats = spool.stats()
    spool.close()
    reopened_spool = make_spool()
    reopened = reopened_spool.stats()
    assert (reopened.depth_ops, reopened.depth_groups) == (8, 2)
    assert reopened_spool.queued() == (8, stats.bytes)
    assert reopened.bytes == stats.bytes > 800
    assert reopened.oldest_enqueued_at == pytest.approx(stats.oldest_enqueued_at, abs=1e-5)
    assert before <= (reopened.oldest_enqueued_at or 0) <= time.time()
    assert reopened.oldest_age_s is not None
    assert reopened.oldest_age_s >= 0


def test_ack_twice_counts_once(make_spool: SpoolFactory) -> None:
    """Acking a group again (or acking an unknown one) does not corrupt the counters."""
    spool = make_spool()
    put_groups(spool, 2, 3)
    got = spool.get_groups(3)
    spool.ack(got)
    spool.ack(got)
    assert spool.stats().depth_ops == 3
    assert spool.queued() == (3, spool.stats().bytes)  # what the drain's pace reads (no I/O)


def test_acked_rows_are_deleted_and_file_shrinks(
    make_spool: SpoolFactory, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acked rows leave the table and, once the queue is empty (and no put came for
    VACUUM_AFTER_IDLE_S, 0 here), the file is vacuumed."""
    monkeypatch.setattr(housekeeping, "VACUUM_AFTER_IDLE_S", 0.0)
    spool = make_spool(vacuum_threshold_bytes=64 * 1024)
    put_groups(spool, 40, 50, size=200)
    big = spool.stats().file_bytes
    for _ in range(100):
        groups = spool.get_groups(500)
        if not groups:
            break
        spool.ack(groups)
    assert rows(spool_dir) == 0
    stats = spool.stats()
    assert (stats.depth_ops, stats.bytes, stats.oldest_enqueued_at) == (0, 0, None)
    assert stats.file_bytes < big / 4


def test_no_vacuum_while_puts_are_recent_until_idle(
    make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vacuum holds the write lock: it waits until puts have stopped for a while, then
    housekeep_when_idle (the drainer's idle call) shrinks the file."""
    spool = make_spool(vacuum_threshold_bytes=64 * 1024)
    put_groups(spool, 40, 50, size=200)
    big = spool.stats().file_bytes
    spool.ack(spool.get_groups(10_000))
    assert spool.stats().depth_ops == 0
    assert spool.stats().file_bytes >= big / 4  # puts just happened: not vacuumed yet
    spool.housekeep_when_idle()
    assert spool.stats().file_bytes >= big / 4  # still within the idle delay
    monkeypatch.setattr(housekeeping, "VACUUM_AFTER_IDLE_S", 0.0)
    spool.housekeep_when_idle()
    assert spool.stats().file_bytes < big / 4


def test_cap_refuses_then_recovers_after_ack(make_spool: SpoolFactory) -> None:
    """Past capacity_bytes check_capacity raises SpoolFull; acking makes room again."""
    spool = make_spool(capacity_bytes=2000)
    put_groups(spool, 3, 5)
    spool.check_capacity(100)
    with pytest.raises(SpoolFull) as info:
        spool.check_capacity(2000)
    assert 1 <= info.value.retry_after_s <= 60
    spool.ack(spool.get_groups(100))
    spool.check_capacity(1500)


def test_free_disk_floor_refuses(make_spool: SpoolFactory) -> None:
    """A floor larger than the free disk refuses every write with SpoolFull."""
    spool = make_spool(min_free_disk_bytes=1 << 62)
    with pytest.raises(SpoolFull, match="free disk"):
        spool.check_capacity(1)


def test_garbage_file_is_renamed_aside(spool_dir: Path, make_spool: SpoolFactory) -> None:
    """A spool file that is not a database is moved aside with a warning; a fresh one opens."""
    spool_dir.mkdir()
    (spool_dir / "spool.db").write_bytes(b"this is not sqlite at all" * 200)
    with capture_logs() as logs:
        spool = make_spool()
    events = [e for e in logs if e["event"] == "spool_corrupt_renamed"]
    assert len(events) == 1
    assert events[0]["log_level"] == "warning"
    aside = list(spool_dir.glob("spool.db.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not sqlite")
    spool.put_group([op(1)])
    assert spool.stats().depth_ops == 1


def test_malformed_pages_are_renamed_aside(spool_dir: Path, make_spool: SpoolFactory) -> None:
    """A valid header over damaged pages ('malformed') is also detected at open."""
    spool = make_spool()
    put_groups(spool, 50, 20, size=300)
    spool.close()
    data = bytearray((spool_dir / "spool.db").read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)
    (spool_dir / "spool.db").write_bytes(bytes(data))
    with capture_logs() as logs:
        fresh = make_spool()
    assert [e["event"] for e in logs if "corrupt" in e["event"]] == ["spool_corrupt_renamed"]
    assert fresh.stats().depth_ops == 0


def test_undecodable_row_is_skipped(make_spool: SpoolFactory, spool_dir: Path) -> None:
    """A row that does not decode is logged and set aside; the groups behind it flow."""
    spool = make_spool()
    spool.put_group([op(1)])
    with closing(sqlite3.connect(spool_dir / "spool.db")) as conn, conn:
        conn.execute(
            f"INSERT INTO {TABLE} (data, timestamp, status) VALUES (?, ?, 1)", (b"{oops", 0.0)
        )
    spool.put_group([op(2)])
    with capture_logs() as logs:
        assert all_seqs(spool) == [1, 2]
    assert any(e["event"] == "spool_group_undecodable" for e in logs)


def test_newer_format_is_refused(spool_dir: Path, make_spool: SpoolFactory) -> None:
    """A spool_meta.json with a newer format_version stops the open with a clear error."""
    spool_dir.mkdir()
    (spool_dir / "spool_meta.json").write_bytes(orjson.dumps({"format_version": 2}))
    with pytest.raises(SpoolFormatError, match="format_version 2"):
        make_spool()


def test_new_spool_is_stamped_with_its_format(spool_dir: Path, make_spool: SpoolFactory) -> None:
    """Opening a new directory writes spool_meta.json with format_version 1."""
    make_spool()
    meta = orjson.loads((spool_dir / "spool_meta.json").read_bytes())
    assert meta["format_version"] == 1


def test_second_owner_is_refused(make_spool: SpoolFactory) -> None:
    """Two spools on one directory would resend each other's in-flight groups: refused."""
    make_spool()
    with pytest.raises(SpoolLockedError):
        make_spool()


def test_closed_spool_refuses_writes(make_spool: SpoolFactory) -> None:
    """put_group after close raises SpoolClosedError instead of a raw SQLite error."""
    spool = make_spool()
    spool.close()
    with pytest.raises(SpoolClosedError):
        spool.put_group([op(1)])


def test_inspect_reads_a_spool_owned_by_another(make_spool: SpoolFactory, spool_dir: Path) -> None:
    """inspect_spool reports depth while the daemon holds the spool (operator CLI)."""
    spool = make_spool()
    put_groups(spool, 3, 4)
    stats = inspect_spool(spool_dir)
    assert (stats.depth_ops, stats.depth_groups) == (12, 3)
    assert inspect_spool(spool_dir / "missing").depth_ops == 0


def test_sqlite_default_is_synchronous_full(spool_dir: Path) -> None:
    """persist-queue leaves synchronous at SQLite's default, which must be FULL (an fsync
    per commit in WAL mode) for a 2xx to mean 'on disk'."""
    with closing(sqlite3.connect(spool_dir.parent / "probe.db")) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_get_groups_memory_is_bounded_by_max_ops(make_spool: SpoolFactory) -> None:
    """Reading from a large backlog returns <= max_ops and allocates far less than it."""
    spool = make_spool()
    put_groups(spool, 400, 100, size=300)  # 40,000 ops, ~13 MB of JSON
    backlog = spool.stats().bytes
    tracemalloc.start()
    try:
        groups = spool.get_groups(500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(len(g.ops) for g in groups) <= 500
    assert peak < backlog / 10
