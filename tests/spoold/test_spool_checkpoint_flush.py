"""spoold's checkpoint threads flush what each pass copied (``fdatasync`` of the database
file, on their own thread), so a complete pass on the accept thread never carries the
dirty pages of every partial pass before it; the descriptor is closed after the file's
last connection; a failed flush stops checkpoints and loses nothing (see
``spoold.spool.checkpoint`` and ``server.sqlite.db_flush``)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory

from server.sqlite import db_flush
from server.sqlite.db_flush import DatabaseFlush
from spoold.accept import acceptor as acceptor_module
from spoold.accept.acceptor import Acceptor
from spoold.spool import layout
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex
from spoold.state.storage import INDEX_FILE, open_storage

CREATES = 6000
WRITERS = 32


def create(name: str) -> dict[str, Any]:
    body = {"event_id": name, "run_id": f"r-{name}", "output_summary": "x" * 400}
    return {"kind": "create", "event_id": name, "body": body}


def descriptors_on(path: Path) -> list[str]:
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


def record_flushes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(thread name, file) of every flush from now on; the flushes still happen."""
    real = db_flush._fdatasync
    seen: list[tuple[str, str]] = []

    def recording(fd: int) -> None:
        seen.append((threading.current_thread().name, os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(db_flush, "_fdatasync", recording)
    return seen


async def accept_creates(acceptor: Acceptor, first: int, count: int) -> None:
    """``count`` creates from WRITERS tasks that never pause (the passes trail the commits,
    so the accept thread restarts the WAL)."""

    async def writer(k: int) -> None:
        for i in range(first + k, first + count, WRITERS):
            await acceptor.submit(create(f"e{i}"))

    await asyncio.wait_for(asyncio.gather(*(writer(k) for k in range(WRITERS))), 120)


@pytest.fixture(autouse=True)
def small_index_wal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The WAL restarts after a few hundred frames, not 2,000: restarts within seconds."""
    monkeypatch.setattr(acceptor_module, "INDEX_RESTART_FRAMES", 200)


async def test_the_index_checkpoint_thread_flushes_what_its_passes_copy(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes = record_flushes(monkeypatch)
    path = tmp_path / "index.sqlite"
    spool, index, flush = make_spool(), RunsIndex(path), DatabaseFlush(path)
    acceptor = Acceptor(spool, index, Ledger(), checkpoint_every_bytes=64 * 1024, index_flush=flush)
    acceptor.start()
    try:
        await accept_creates(acceptor, 0, CREATES)
    finally:
        await acceptor.close()
    index_flushes = [thread for thread, file in flushes if file == str(path)]
    assert index_flushes, "no pass of the index was flushed"
    assert set(index_flushes) == {"index-checkpoint"}, "flushed on another thread"
    assert acceptor.stats.wal_copies > 0  # the writer's restarts go on beside the flushes
    assert index.known_count() == CREATES
    index.close()
    assert flush.close() is True
    assert not descriptors_on(path)


async def test_a_failed_index_flush_stops_checkpoints_and_restarts_and_loses_nothing(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO from the flush: the kernel may have dropped the pages, so neither the thread
    nor the accept thread may let SQLite start the WAL over on top of them. Writes go
    on into the WAL, all of them are answered and kept."""
    calls: list[str] = []

    def failing(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(db_flush, "_fdatasync", failing)
    path = tmp_path / "index.sqlite"
    spool, index, flush = make_spool(), RunsIndex(path), DatabaseFlush(path)
    acceptor = Acceptor(spool, index, Ledger(), checkpoint_every_bytes=64 * 1024, index_flush=flush)
    acceptor.start()
    try:
        await accept_creates(acceptor, 0, CREATES)
        checkpointer = acceptor._checkpointer
        assert checkpointer is not None
        assert checkpointer.halted
        await accept_creates(acceptor, CREATES, CREATES)
        # The same load restarts the WAL many times when flushes work (the test above).
        assert acceptor.stats.wal_copies == 0, "the writer restarted the WAL after it"
        assert not checkpointer.restart_now(idle=True)
        assert os.stat(f"{path}-wal").st_size > 10 * 200 * 4096  # it only grew
    finally:
        await acceptor.close()
    assert calls.count(str(path)) == 1, "a flush of the index after the failed one"
    assert index.known_count() == 2 * CREATES
    assert spool.stats().depth_ops == 2 * CREATES
    index.close()
    flush.close()
    reopened = RunsIndex(path)  # what a restart reads back: every write
    try:
        assert reopened.known_count() == 2 * CREATES
    finally:
        reopened.close()


def test_the_spool_flushes_its_passes_and_closes_the_descriptor_last(
    make_spool: SpoolFactory, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes = record_flushes(monkeypatch)
    spool = make_spool()
    db_path = spool_dir / layout.DB_FILE
    order: list[str] = []
    side, flush = spool._side, spool._db_flush
    assert side is not None
    assert flush is not None
    monkeypatch.setattr(spool, "_side", _Recording(side, order, "side"))
    monkeypatch.setattr(flush, "close", recording_close(order, "flush", flush.close))
    for i in range(400):  # ~4 MiB of puts: many checkpoint passes
        spool.put_group([{"kind": "create", "event_id": f"e{i}", "pad": "x" * 10_000}])
    spool.close()
    assert [f for _, f in flushes if f == str(db_path)], "no pass of the spool was flushed"
    assert {t for t, f in flushes if f == str(db_path)} == {"spool-checkpoint"}
    assert order == ["side", "flush"], "the descriptor closed before the side connection"
    assert not descriptors_on(db_path)


def recording_close(order: list[str], name: str, real: Callable[[], Any]) -> Callable[[], Any]:
    """``real``, whose calls are recorded in ``order`` under ``name``."""

    def close() -> Any:
        order.append(name)
        return real()

    return close


class _Recording:
    """A connection whose close is recorded (every other attribute is the real one's)."""

    def __init__(self, conn: Any, order: list[str], name: str) -> None:
        self._conn, self._order, self._name = conn, order, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._conn, attr)

    def close(self) -> None:
        self._order.append(self._name)
        self._conn.close()


def test_storage_closes_the_index_flush_after_every_index_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(tmp_path, capacity_bytes=64 * 1024 * 1024, min_free_disk_bytes=0)
    index_path = tmp_path / INDEX_FILE
    flush = storage.index_flush
    assert flush is not None
    assert flush.is_open
    order: list[str] = []
    for name in ("accept_index", "drain_index", "reader_index"):
        index = getattr(storage, name)
        monkeypatch.setattr(index, "close", recording_close(order, name, index.close))
    monkeypatch.setattr(flush, "close", recording_close(order, "flush", flush.close))
    storage.close()
    assert order == ["accept_index", "drain_index", "reader_index", "flush"]
    assert not flush.is_open
    assert not descriptors_on(index_path)
