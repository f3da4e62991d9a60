"""The checkpoint thread flushes what each pass copied (``fdatasync`` of the database file)
on its own thread, so the writer's catch-up never carries a second of dirty pages; its
descriptor is closed only after the last connection, and a flush that fails or cannot be
set up changes nothing but speed (see storage.checkpoint)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from server.contract.models import RunCreate
from server.sqlite import db_flush
from server.storage.database import Database, StorageSettings

RESTART_PAGES = 200
PASS_INTERVAL_S = 0.05
RUNS = 800
WRITERS = 8


def _run(i: int) -> RunCreate:
    return RunCreate.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "run_id": f"r-{i}",
            "agent_name": f"agent-{i % 40}",
            "job_type": "flush",
            "status": "running",
            "start_time": "2026-01-12T10:00:00Z",
            "metrics_json": {"pad": "x" * 1500},  # a page or so a run: the WAL grows fast
        }
    )


def _open(path: Path) -> Database:
    return Database.open(
        StorageSettings(
            path=path,
            synchronous="FULL",
            wal_restart_pages=RESTART_PAGES,
            checkpoint_interval_s=PASS_INTERVAL_S,
        )
    )


async def _write(db: Database) -> list[str]:
    """RUNS creates from WRITERS tasks at once, never pausing: passes run under writes."""
    acked: list[str] = []

    async def one_writer(first: int) -> None:
        for i in range(first, RUNS, WRITERS):
            run = _run(i)
            assert await db.create(run)
            acked.append(run.event_id)

    await asyncio.wait_for(asyncio.gather(*(one_writer(w) for w in range(WRITERS))), 120)
    return acked


def _stored(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT event_id FROM agent_runs")}
    finally:
        conn.close()


def _descriptors_on(path: Path) -> list[str]:
    """This process's open descriptors on the file (by /proc/self/fd)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed since listed
        if target == str(path):
            found.append(name)
    return found


@pytest.mark.timeout(180)
async def test_every_pass_is_flushed_by_the_thread_and_the_descriptor_closed_last(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.sqlite"
    db = _open(path)
    checkpointer = db.checkpointer
    assert checkpointer is not None
    closed_while_connected: list[bool] = []
    real_close = db.probe.close

    def probe_close() -> None:  # the last connection: the flush descriptor must be open yet
        closed_while_connected.append(not checkpointer.holds_file)
        real_close()

    db.probe.close = probe_close  # type: ignore[method-assign]
    try:
        assert _descriptors_on(path), "no descriptor for the flushes"
        acked = await _write(db)
    finally:
        await db.close()
    stats = checkpointer.stats
    assert stats.passes > 0, stats
    assert stats.flushes > 0, stats
    assert stats.flushes <= stats.passes
    assert stats.failures == 0
    assert closed_while_connected == [False], "closed before the database's last connection"
    assert not checkpointer.holds_file
    # Only the descriptor of ours is checked: SQLite's are closed with their connections.
    assert not _descriptors_on(path), "the flush descriptor outlived the database"
    assert set(acked) <= _stored(path)


async def test_close_file_refuses_while_a_pass_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stop`` timed out with a pass blocked in its flush (a stuck disk): the descriptor
    is neither closed nor its number reused under that pass; closed once it ends."""
    entered, release = threading.Event(), threading.Event()

    def stuck_fdatasync(fd: int) -> None:
        entered.set()
        release.wait(30)

    monkeypatch.setattr(db_flush, "_fdatasync", stuck_fdatasync)
    path = tmp_path / "stuck.sqlite"
    db = _open(path)
    checkpointer = db.checkpointer
    assert checkpointer is not None
    try:
        writes = asyncio.ensure_future(_write(db))
        assert await asyncio.to_thread(entered.wait, 60), "no pass flushed"
        checkpointer.stop(timeout_s=0.05)
        assert checkpointer.close_file() is False
        assert checkpointer.holds_file  # still open: no other file can take its number
    finally:
        release.set()
        acked = await writes
        await db.close()
    assert checkpointer.close_file() is True
    assert not _descriptors_on(path)
    assert set(acked) <= _stored(path)


@pytest.mark.timeout(180)
async def test_a_failed_flush_stops_checkpoints_for_good_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO from the flush (a disk going bad): the kernel may have dropped the pages, so no
    later pass may let SQLite start the WAL over on top of them. Checkpoints stop, the
    writer is never asked to catch up again, writes go on into the WAL, nothing
    acknowledged is lost, and a restart reads it all back."""
    calls = 0

    def failing_fdatasync(fd: int) -> None:
        nonlocal calls
        calls += 1
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(db_flush, "_fdatasync", failing_fdatasync)
    path = tmp_path / "eio.sqlite"
    db = _open(path)
    checkpointer = db.checkpointer
    assert checkpointer is not None
    try:
        acked = await _write(db)
        passes_after_failure = checkpointer.stats.passes
        catch_ups = checkpointer.stats.writer_catch_ups
        more = await _write(db)  # the WAL only grows now
        assert checkpointer.stats.passes == passes_after_failure
        assert checkpointer.stats.writer_catch_ups == catch_ups
        assert not checkpointer.catch_up_now(idle=True)
    finally:
        await db.close()
    assert calls == 1, "a pass after the failed flush"
    assert checkpointer.stats.flushes == 0
    assert checkpointer.stats.failures == 1
    assert set(acked) | set(more) <= _stored(path)


@pytest.mark.timeout(180)
async def test_no_descriptor_means_no_flush_and_nothing_else_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database file cannot be opened again (e.g. a descriptor limit): passes go on
    without the flush."""
    real_open = os.open
    path = tmp_path / "nofd.sqlite"

    def refusing_open(file: str | os.PathLike[str], flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(file) == path:
            raise OSError(24, "Too many open files")
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    db = _open(path)
    try:
        checkpointer = db.checkpointer
        assert checkpointer is not None
        assert not checkpointer.holds_file
        acked = await _write(db)
    finally:
        await db.close()
    assert checkpointer.stats.passes > 0
    assert checkpointer.stats.flushes == 0
    assert checkpointer.stats.failures == 0
    assert set(acked) <= _stored(path)
