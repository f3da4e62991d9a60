"""Start-up that does not grow with the backlog: the spool's live totals are kept by
triggers (no count over every row at open), and the whole-file checks of a large spool
or runs index run after start-up; damage they find makes the next start check the
file first, where it is set aside as before."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory, accept, clear_acked_now, op
from structlog.testing import capture_logs

from spoold.config import ConfigError, SpooldConfig
from spoold.spool import Spool, layout, totals
from spoold.state import verify
from spoold.state.recovery import reconcile
from spoold.state.storage import INDEX_FILE, Storage, StorageRecoveries, open_storage


def full_count(spool_dir: Path) -> tuple[int, int, int]:
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        return totals.count(conn)


def kept_totals(spool_dir: Path) -> tuple[int, int, int]:
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        return totals.read(conn)


def test_the_kept_totals_follow_puts_gets_acks_nacks_and_clears(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    spool = make_spool()
    for i in range(6):
        spool.put_group([op(10 * i + k, size=300) for k in range(i + 1)])
    assert kept_totals(spool_dir) == full_count(spool_dir) != (0, 0, 0)
    groups = spool.get_groups(6)
    spool.ack(groups[:2])
    spool.nack(groups[2:])
    assert kept_totals(spool_dir) == full_count(spool_dir)
    clear_acked_now(spool)  # deletes acked rows
    again = spool.get_groups(100)
    spool.ack(again[:1])
    assert kept_totals(spool_dir) == full_count(spool_dir)
    stats = spool.stats()
    spool.close()

    reopened = make_spool()
    assert (reopened.stats().depth_groups, reopened.stats().depth_ops) == (
        stats.depth_groups,
        stats.depth_ops,
    )
    assert reopened.stats().bytes == stats.bytes
    assert kept_totals(spool_dir) == full_count(spool_dir)  # nothing to correct


def test_a_spool_from_before_the_totals_gets_them_counted_once(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    spool = make_spool()
    spool.put_group([op(1), op(2)])
    spool.put_group([op(3)])
    spool.close()
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:  # an older spoold's file
        for name in ("put", "delete", "leave", "return"):
            conn.execute(f"DROP TRIGGER spoold_totals_{name}")
        conn.execute(f"DROP TABLE {totals.TABLE}")
        conn.commit()

    spool = make_spool()

    assert (spool.stats().depth_groups, spool.stats().depth_ops) == (2, 3)
    spool.put_group([op(4)])
    assert kept_totals(spool_dir) == full_count(spool_dir)


def test_totals_that_drifted_are_corrected_by_the_read_at_open(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    spool = make_spool()
    spool.put_group([op(1), op(2)])
    spool.close()
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        conn.execute(f"UPDATE {totals.TABLE} SET ops = ops + 5, groups = groups + 1")
        conn.commit()
    assert kept_totals(spool_dir) != full_count(spool_dir)

    with capture_logs() as logs:
        spool = make_spool()

    assert (spool.stats().depth_groups, spool.stats().depth_ops) == (1, 2)
    assert kept_totals(spool_dir) == full_count(spool_dir)
    assert [e["event"] for e in logs if e["event"] == "spool_totals_corrected"] == [
        "spool_totals_corrected"
    ]


# ---- whole-file checks after start-up -------------------------------------------------


def _index_entries_damaged(path: Path) -> None:
    """An index whose entries no longer match its declaration: opening and reading it
    work; ``PRAGMA integrity_check`` (and a write of such a row) finds the damage."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql ="
            " 'CREATE INDEX runs_prunable ON runs(touched_at, pending)'"
            " WHERE name = 'runs_prunable'"
        )


@pytest.fixture
def storages() -> Iterator[list[Storage]]:
    opened: list[Storage] = []
    yield opened
    for storage in opened:
        storage.close()


def _open(spool_dir: Path, storages: list[Storage], **kwargs: Any) -> Storage:
    storage = open_storage(spool_dir, capacity_bytes=1 << 30, min_free_disk_bytes=0, **kwargs)
    storages.append(storage)
    return storage


def _close(storage: Storage) -> None:
    storage.close()


def _queue_some(spool_dir: Path, storages: list[Storage]) -> None:
    storage = _open(spool_dir, storages)
    spool, index = storage.spool, storage.accept_index
    reconcile(spool, index)
    asyncio.run(accept(spool, index, *(op(i) for i in range(5))))
    _close(storages.pop())


def test_a_large_damaged_index_is_found_after_start_and_set_aside_at_the_next(
    spool_dir: Path, storages: list[Storage]
) -> None:
    _queue_some(spool_dir, storages)
    path = spool_dir / INDEX_FILE
    _index_entries_damaged(path)
    deferred = verify.Deferred()
    damage_seen: list[bool] = []
    deferred.on_damage = lambda: damage_seen.append(True)

    with capture_logs() as logs:
        storage = _open(spool_dir, storages, check_max_bytes=0, deferred=deferred)
        spool, index = storage.spool, storage.accept_index
        counts = reconcile(spool, index)
    assert not [e for e in logs if e["event"] == "runs_index_corrupt"]  # not checked yet
    assert counts.queued == 5
    assert deferred.index == path

    with capture_logs() as logs:
        assert deferred.run() is False

    assert damage_seen == [True]
    damaged = [e for e in logs if e["event"] == "local_file_damaged"]
    assert len(damaged) == 1
    assert damaged[0]["log_level"] == "critical"
    assert verify.check_requested(path)
    _close(storages.pop())

    again = verify.Deferred()
    with capture_logs() as logs:
        storage = _open(spool_dir, storages, check_max_bytes=0, deferred=again)
        spool, index, reader = storage.spool, storage.accept_index, storage.reader_index
        counts = reconcile(spool, index)

    assert [e["event"] for e in logs if e["event"] == "runs_index_corrupt"] == [
        "runs_index_corrupt"
    ]
    assert again.index is None  # checked before serving, because it was asked for
    assert not verify.check_requested(path)
    assert StorageRecoveries.read(index).index_rebuilds == 1
    assert counts.queued == 5
    assert counts.adds_up
    assert reader.get("ev-3") is not None  # rebuilt from the spool


def test_healthy_large_files_pass_the_check_after_start(
    spool_dir: Path, storages: list[Storage]
) -> None:
    _queue_some(spool_dir, storages)
    deferred = verify.Deferred()
    deferred.on_damage = lambda: pytest.fail("no damage here")
    _open(spool_dir, storages, check_max_bytes=0, deferred=deferred)
    assert deferred
    assert deferred.run() is True
    assert not list(spool_dir.glob(f"*{verify.REQUEST_SUFFIX}"))


def test_small_files_are_still_checked_before_serving(
    spool_dir: Path, storages: list[Storage]
) -> None:
    _queue_some(spool_dir, storages)
    _index_entries_damaged(spool_dir / INDEX_FILE)
    deferred = verify.Deferred()
    with capture_logs() as logs:
        _open(spool_dir, storages, check_max_bytes=64 << 20, deferred=deferred)
    assert not deferred
    assert [e["event"] for e in logs if e["event"] == "runs_index_corrupt"] == [
        "runs_index_corrupt"
    ]


def test_a_large_spool_is_read_through_before_serving(
    spool_dir: Path, storages: list[Storage]
) -> None:
    """Only the runs index's check may wait: a damaged spool found after start-up would be
    set aside at the next start with every write acknowledged since in it, lost to the
    server. So the spool's rows are read before anything is accepted, whatever its size."""
    spool = Spool(spool_dir, capacity_bytes=1 << 30, min_free_disk_bytes=0)
    for start in range(0, 4000, 40):
        spool.put_group([op(i, size=400) for i in range(start, start + 40)])
    spool.close()
    path = spool_dir / layout.DB_FILE
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[-3 * 4096 :] = b"\xa5" * (3 * 4096)  # the last rows' pages; the schema is intact
    path.write_bytes(bytes(data))
    deferred = verify.Deferred()
    with capture_logs() as logs:
        spool = _open(spool_dir, storages, check_max_bytes=0, deferred=deferred).spool
    assert [e["event"] for e in logs if e["event"] == "spool_corrupt_renamed"] == [
        "spool_corrupt_renamed"
    ]
    assert spool.stats().depth_ops == 0  # a fresh spool: new writes never go to the damaged one


def test_the_startup_check_bound_is_a_validated_setting() -> None:
    assert SpooldConfig.from_env({}).startup_check_max_bytes == 16 * 1024 * 1024
    assert SpooldConfig.from_env({"SPOOLD_STARTUP_CHECK_MAX_MB": "0"}).startup_check_max_bytes == 0
    for bad in ("-1", "lots"):
        with pytest.raises(ConfigError, match="SPOOLD_STARTUP_CHECK_MAX_MB"):
            SpooldConfig.from_env({"SPOOLD_STARTUP_CHECK_MAX_MB": bad})


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice is Linux's")
def test_the_checks_after_start_run_at_the_lowest_priority_in_their_own_thread() -> None:
    seen: list[int] = []

    def check() -> None:
        verify.lower_this_threads_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=check)
    thread.start()
    thread.join(5)
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 19  # only that thread


_STOP_DURING_THE_CHECK = """
import asyncio, threading, time
from pathlib import Path
from spoold import app
from spoold.state import verify

app.CHECK_AFTER_START_DELAY_S = 0.0
began = threading.Event()

class Stuck(verify.Deferred):
    def run(self):  # a check of a large file at nice 19 on a busy machine
        began.set()
        time.sleep(600)
        return True

async def main():
    task = asyncio.create_task(app._check_after_start(Stuck(index=Path("runs-index.sqlite"))))
    for _ in range(500):
        if began.is_set():
            break
        await asyncio.sleep(0.01)
    assert began.is_set()
    task.cancel()  # the stop: storage_ctx cancels the checks and returns

asyncio.run(main())
print("returned", flush=True)
"""


def test_a_stop_while_the_check_after_start_runs_is_not_held_up_by_it(tmp_path: Path) -> None:
    """spoold stopping during the check after start-up (which can take minutes on a large
    spool at nice 19) exits at once: the check's thread must not be one the interpreter
    joins at exit, or every such stop waits for the hard-stop timer and ends with its
    exit status 70 (a clean stop reported as overrun)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _STOP_DURING_THE_CHECK],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)
        pytest.fail("the process did not exit: its exit joined the check's thread")
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]
    assert b"returned" in output
