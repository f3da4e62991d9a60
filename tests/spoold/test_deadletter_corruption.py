"""A damaged dead-letter file is set aside (kept for inspection), a fresh store opened,
the loss logged with the letters the old file still shows, and the reset counted."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from spoold.spool import DeadLetterStore, SpoolFormatError
from spoold.state.recovery import reconcile
from spoold.state.storage import (
    DEAD_LETTER_FILE,
    Storage,
    StorageRecoveries,
    open_dead_letters,
    open_storage,
)

LETTERS = 200


def poison(k: int) -> dict[str, Any]:
    event_id = f"poison-{k:04d}"
    return {"kind": "update", "event_id": event_id, "body": {"marker": f"M{k:04d}" + "x" * 900}}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / DEAD_LETTER_FILE


@pytest.fixture
def stores() -> Iterator[list[DeadLetterStore]]:
    opened: list[DeadLetterStore] = []
    yield opened
    for store in opened:
        store.close()


def _fill(path: Path) -> None:
    with DeadLetterStore(path) as store:
        store.add_many([(poison(k), "refused", 422) for k in range(LETTERS)])
    assert not Path(f"{path}-wal").exists()


def _trash_page_holding(path: Path, marker: bytes) -> None:
    """Overwrite the table page that holds ``marker`` (the op_key index stays intact)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    at = data.index(marker)
    start = at - at % page
    data[start : start + page] = b"\xa5" * page
    path.write_bytes(bytes(data))


def _open(path: Path, stores: list[DeadLetterStore]) -> tuple[DeadLetterStore, Any]:
    store, aside = open_dead_letters(path)
    stores.append(store)
    return store, aside


def test_garbage_file_is_set_aside_and_a_fresh_store_works(
    path: Path, stores: list[DeadLetterStore]
) -> None:
    garbage = os.urandom(32_768)
    path.write_bytes(garbage)
    with capture_logs() as logs:
        store, aside = _open(path, stores)
    assert aside is not None
    assert aside.renamed_to.read_bytes() == garbage  # kept as it was, for inspection
    assert aside.renamed_to.name.startswith(f"{DEAD_LETTER_FILE}.corrupt-")
    lines = [e for e in logs if e["event"] == "dead_letter_store_corrupt"]
    assert len(lines) == 1
    assert (lines[0]["log_level"], lines[0]["letters_lost"]) == ("error", None)
    assert lines[0]["code"] == "SQLITE_NOTADB"
    assert store.count() == 0
    store.add(poison(1), "refused", 422)
    assert [letter.op["event_id"] for letter in store.list()] == ["poison-0001"]


def test_damaged_page_counts_the_letters_it_still_shows(
    path: Path, stores: list[DeadLetterStore]
) -> None:
    """A table page of a full store is trashed: the file is set aside and the log says how
    many letters it held (counted through its intact index), best effort."""
    _fill(path)
    _trash_page_holding(path, b"M0100")
    damaged = path.read_bytes()
    with capture_logs() as logs:
        store, aside = _open(path, stores)
    assert aside is not None
    lines = [e for e in logs if e["event"] == "dead_letter_store_corrupt"]
    assert [e["letters_lost"] for e in lines] == [LETTERS]
    assert store.count() == 0
    assert aside.renamed_to.read_bytes() == damaged  # kept untouched for inspection


def test_a_healthy_store_is_kept(path: Path, stores: list[DeadLetterStore]) -> None:
    _fill(path)
    with capture_logs() as logs:
        store, aside = _open(path, stores)
    assert aside is None
    assert store.count() == LETTERS
    assert [e for e in logs if "corrupt" in e["event"]] == []
    assert list(path.parent.glob("*.corrupt-*")) == []


def test_a_store_from_a_newer_spoold_is_refused_not_set_aside(path: Path) -> None:
    """Not damage: a schema this spoold cannot read. Renaming it would hide the letters."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SpoolFormatError):
        open_dead_letters(path)
    assert path.exists()
    assert list(path.parent.glob("*.corrupt-*")) == []


def test_open_storage_counts_the_reset_durably(tmp_path: Path) -> None:
    """The reset is kept in the runs index: it survives a restart, and a second damaged
    file makes it two."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    for expected in (1, 2):
        (spool_dir / DEAD_LETTER_FILE).write_bytes(os.urandom(8192))
        storage: Storage = open_storage(spool_dir, capacity_bytes=1 << 20, min_free_disk_bytes=0)
        try:
            reconcile(storage.spool, storage.accept_index)
            assert StorageRecoveries.read(storage.accept_index) == StorageRecoveries(
                dead_letter_store_resets=expected
            )
        finally:
            storage.close()
    assert len(list(spool_dir.glob(f"{DEAD_LETTER_FILE}.corrupt-*"))) == 2


def test_a_damaged_sequence_table_is_found_at_open(
    path: Path, stores: list[DeadLetterStore]
) -> None:
    """sqlite_sequence with the wrong shape passes integrity_check, yet every new letter
    would fail with SQLITE_CORRUPT_SEQUENCE (523): the file is set aside at open."""
    _fill(path)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = 'CREATE TABLE sqlite_sequence(name,seq,extra)'"
            " WHERE name = 'sqlite_sequence'"
        )
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with capture_logs() as logs:
        store, aside = _open(path, stores)
    assert aside is not None
    assert [e["letters_lost"] for e in logs if e["event"] == "dead_letter_store_corrupt"] == [
        LETTERS
    ]
    store.add(poison(1), "refused", 422)  # the fresh store takes letters again
    assert store.count() == 1
