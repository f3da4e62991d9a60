"""A damaged runs index is set aside and rebuilt from the spool; corruption is recognised
by SQLite's primary result code (``code & 0xFF``), extended codes included."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory, accept, op
from structlog.testing import capture_logs

from server.sqlite.errors import is_corruption, is_disk_full, primary_code
from spoold.spool.integrity import open_or_set_aside
from spoold.state.ledger import Counts
from spoold.state.recovery import reconcile
from spoold.state.runs_index import RunsIndex
from spoold.state.storage import INDEX_FILE, Storage, StorageRecoveries, open_storage

# ---- the classifier, one SQLite result code at a time ---------------------------------


def sqlite_error(code: int, name: str, cls: type[sqlite3.Error] = sqlite3.DatabaseError) -> Any:
    exc = cls(f"error {name}")
    exc.sqlite_errorcode = code
    exc.sqlite_errorname = name
    return exc


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (11, "SQLITE_CORRUPT"),
        (26, "SQLITE_NOTADB"),
        (267, "SQLITE_CORRUPT_VTAB"),
        (523, "SQLITE_CORRUPT_SEQUENCE"),
        (779, "SQLITE_CORRUPT_INDEX"),
    ],
)
def test_every_corrupt_code_is_corruption(code: int, name: str) -> None:
    assert getattr(sqlite3, name) == code  # the module's own constant, where it has one
    assert primary_code(sqlite_error(code, name)) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    assert is_corruption(sqlite_error(code, name))
    assert not is_disk_full(sqlite_error(code, name))


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (1, "SQLITE_ERROR"),
        (5, "SQLITE_BUSY"),
        (8, "SQLITE_READONLY"),
        (10, "SQLITE_IOERR"),
        (266, "SQLITE_IOERR_READ"),
        (13, "SQLITE_FULL"),
        (14, "SQLITE_CANTOPEN"),
        (517, "SQLITE_BUSY_SNAPSHOT"),
    ],
)
def test_other_codes_are_not_corruption(code: int, name: str) -> None:
    """A busy, read-only or unopenable file must never be renamed aside as corrupt."""
    assert not is_corruption(sqlite_error(code, name, sqlite3.OperationalError))
    assert is_disk_full(sqlite_error(code, name)) == (code == sqlite3.SQLITE_FULL)


def test_a_message_alone_is_not_corruption() -> None:
    """Classification reads the code, never the text."""
    assert not is_corruption(sqlite3.DatabaseError("database disk image is malformed"))
    assert not is_corruption(OSError("file is not a database"))
    assert primary_code(ValueError("x")) is None


def _sequence_table_damaged(path: Path) -> None:
    """sqlite_sequence declared with three columns: AUTOINCREMENT then fails."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = 'CREATE TABLE sqlite_sequence(name,seq,extra)'"
            " WHERE name = 'sqlite_sequence'"
        )


def test_real_corrupt_sequence_error_is_corruption(tmp_path: Path) -> None:
    """SQLite's own SQLITE_CORRUPT_SEQUENCE (523), not a hand-made one."""
    path = tmp_path / "seq.sqlite"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
        conn.execute("INSERT INTO t (v) VALUES (1)")
    _sequence_table_damaged(path)
    with (
        closing(sqlite3.connect(path, isolation_level=None)) as conn,
        pytest.raises(sqlite3.DatabaseError) as info,
    ):
        conn.execute("INSERT INTO t (v) VALUES (2)")
    assert info.value.sqlite_errorcode == sqlite3.SQLITE_CORRUPT_SEQUENCE
    assert is_corruption(info.value)


def test_spool_with_a_damaged_sequence_is_set_aside_at_open(
    spool_dir: Path, make_spool: SpoolFactory
) -> None:
    """Reads and integrity checks miss it; a put would fail with 523 for ever. The spool's
    open tries a put (rolled back), so the file is set aside and writes work."""
    spool = make_spool()
    spool.put_group([op(1)])
    spool.close()
    _sequence_table_damaged(spool_dir / "spool.db")
    with closing(sqlite3.connect(spool_dir / "spool.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with capture_logs() as logs:
        fresh = make_spool()
    assert fresh.quarantined_to is not None
    renamed = [e for e in logs if e["event"] == "spool_corrupt_renamed"]
    assert [e["code"] for e in renamed] == ["SQLITE_CORRUPT_SEQUENCE"]
    fresh.put_group([op(2)])
    assert fresh.stats().depth_ops == 1


def _index_entries_damaged(path: Path) -> None:
    """runs_prunable's entries no longer match its declaration: SQLite finds out when a
    row changes (SQLITE_CORRUPT_INDEX) or in an integrity check, not on reads."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql ="
            " 'CREATE INDEX runs_prunable ON runs(touched_at, pending)'"
            " WHERE name = 'runs_prunable'"
        )


async def test_real_corrupt_index_error_from_a_settle_is_corruption(
    make_spool: SpoolFactory, tmp_path: Path
) -> None:
    """The drainer's settle on such an index gets SQLite's SQLITE_CORRUPT_INDEX (779)."""
    path = tmp_path / INDEX_FILE
    index = RunsIndex(path)
    await accept(make_spool(), index, op(1))
    index.close()
    _index_entries_damaged(path)
    index = RunsIndex(path)
    try:
        with pytest.raises(sqlite3.DatabaseError) as info:
            index.settle({"ev-1": 1}, {})
    finally:
        index.close()
    assert info.value.sqlite_errorcode == sqlite3.SQLITE_CORRUPT_INDEX
    assert is_corruption(info.value)


# ---- a damaged index at start-up ------------------------------------------------------


def _page_size(data: bytes) -> int:
    return int.from_bytes(data[16:18], "big") or 65536


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    page = _page_size(data)
    assert len(data) >= 3 * page
    path.write_bytes(data[: page + page // 2])


def _table_root_trashed(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()
    data = bytearray(path.read_bytes())
    page = _page_size(bytes(data))
    data[(root - 1) * page : root * page] = b"\xa5" * page
    path.write_bytes(bytes(data))


def _not_sqlite(path: Path) -> None:
    path.write_text("runs,pending\nsomething else entirely\n" * 200)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "garbage": _garbage,
    "truncated": _truncated,
    "corrupt-page": _table_root_trashed,
    "not-sqlite": _not_sqlite,
    "index-entries": _index_entries_damaged,
}


def create(name: str) -> dict[str, Any]:
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}


def update(name: str, **changes: Any) -> dict[str, Any]:
    return {"kind": "update", "event_id": name, "body": changes}


@pytest.fixture
def storages() -> Iterator[list[Storage]]:
    opened: list[Storage] = []
    yield opened
    for storage in opened:
        storage.close()


def _open(spool_dir: Path, storages: list[Storage]) -> Storage:
    storage = open_storage(spool_dir, capacity_bytes=1 << 30, min_free_disk_bytes=0)
    storages.append(storage)
    return storage


def _close(storage: Storage) -> None:
    storage.close()


def _history(spool_dir: Path, storages: list[Storage]) -> None:
    """40 runs accepted and delivered, then a, b (with an update) and c left queued."""
    storage = _open(spool_dir, storages)
    spool, index, drain_index = storage.spool, storage.accept_index, storage.drain_index
    reconcile(spool, index)
    asyncio.run(accept(spool, index, *(create(f"old-{k}") for k in range(40))))
    delivered = spool.get_groups(40)
    drain_index.settle({f"old-{k}": 1 for k in range(40)}, {}, [g.id for g in delivered])
    spool.ack(delivered)
    last = (create("a"), create("b"), update("b", status="done"), create("c"))
    asyncio.run(accept(spool, index, *last))
    _close(storages.pop())


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_index_is_set_aside_and_rebuilt_from_the_spool(
    spool_dir: Path, storages: list[Storage], damage: str
) -> None:
    """open_storage renames the damaged file (and its -wal/-shm) aside, logs it at error
    level with SQLite's code, counts it; reconcile rebuilds: the queued runs are known
    with their pending operations and snapshots, the counters add up (history lost:
    accepted restarts at what is queued), and nothing queued is lost or duplicated."""
    _history(spool_dir, storages)
    path = spool_dir / INDEX_FILE
    assert not Path(f"{path}-wal").exists()
    DAMAGE[damage](path)

    with capture_logs() as logs:
        storage = _open(spool_dir, storages)
        spool, index, reader = storage.spool, storage.accept_index, storage.reader_index
        counts = reconcile(spool, index)

    corrupt = [e for e in logs if e["event"] == "runs_index_corrupt"]
    assert len(corrupt) == 1
    assert corrupt[0]["log_level"] == "error"
    assert corrupt[0]["code"] is not None
    aside = sorted(spool_dir.glob(f"{INDEX_FILE}*.corrupt-*"))
    assert Path(corrupt[0]["renamed_to"]) in aside
    assert StorageRecoveries.read(index) == StorageRecoveries(index_rebuilds=1)
    assert counts == Counts(accepted=4, queued=4)
    assert counts.adds_up
    runs = {name: reader.get(name) for name in ("a", "b", "c", "old-1")}
    assert {name: run.pending if run else None for name, run in runs.items()} == {
        "a": 1,
        "b": 2,
        "c": 1,
        "old-1": None,  # delivered before: forgotten, as if pruned
    }
    run_b = runs["b"]
    assert run_b is not None
    assert (run_b.has_create, run_b.snapshot["status"]) == (True, "done")
    queued = [o["event_id"] for g in spool.get_groups(100) for o in g.ops]
    assert queued == ["a", "b", "b", "c"]


def test_a_second_rebuild_counts_two(spool_dir: Path, storages: list[Storage]) -> None:
    """The count survives in the set-aside files: a rebuilt index starts from them."""
    _history(spool_dir, storages)
    for expected in (1, 2):
        _garbage(spool_dir / INDEX_FILE)
        storage = _open(spool_dir, storages)
        reconcile(storage.spool, storage.accept_index)
        assert StorageRecoveries.read(storage.accept_index).index_rebuilds == expected
        _close(storages.pop())


def test_a_healthy_index_is_opened_as_it_is(spool_dir: Path, storages: list[Storage]) -> None:
    """No false alarm: a consistent index is checked and kept, nothing set aside."""
    _history(spool_dir, storages)
    with capture_logs() as logs:
        storage = _open(spool_dir, storages)
        spool, index = storage.spool, storage.accept_index
        counts = reconcile(spool, index)
    assert counts == Counts(accepted=44, forwarded=40, queued=4)
    assert [e for e in logs if "corrupt" in e["event"]] == []
    assert list(spool_dir.glob("*.corrupt-*")) == []
    assert StorageRecoveries.read(index) == StorageRecoveries()


def test_an_error_that_is_not_corruption_leaves_the_file_alone(tmp_path: Path) -> None:
    """A busy or unopenable file propagates its error; it is never renamed aside."""
    path = tmp_path / INDEX_FILE
    path.write_bytes(b"whatever")

    def busy(_: Path) -> None:
        raise sqlite_error(5, "SQLITE_BUSY", sqlite3.OperationalError)

    with pytest.raises(sqlite3.OperationalError):
        open_or_set_aside(path, busy)
    assert path.read_bytes() == b"whatever"
    assert list(tmp_path.glob("*.corrupt-*")) == []
