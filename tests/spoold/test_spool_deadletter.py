"""DeadLetterStore: durable records of refused operations, listable and replayable."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from spool_helpers import SpoolFactory, all_seqs, op

from spoold.spool import DeadLetterStore, SpoolFormatError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DeadLetterStore]:
    with DeadLetterStore(tmp_path / "deadletter.db") as s:
        yield s


def test_add_get_list_count(store: DeadLetterStore) -> None:
    """A record keeps the op, reason, status, times and attempts; list is oldest first."""
    first = store.add(op(1), "run_id is unknown", 404)
    second = store.add(op(2), "payload too large", 413)
    record = store.get(first)
    assert record is not None
    assert record.op == op(1)
    assert (record.error, record.status, record.attempts) == ("run_id is unknown", 404, 1)
    assert record.first_failed_at == record.last_failed_at > 0
    assert [r.id for r in store.list()] == [first, second]
    assert [r.id for r in store.list(limit=1, offset=1)] == [second]
    assert store.count() == 2
    assert store.get(999) is None


def test_same_op_failing_again_updates_its_record(store: DeadLetterStore) -> None:
    """Refusing an identical operation again bumps attempts and last_failed_at, no duplicate."""
    first = store.add({"a": 1, "b": 2}, "bad", 422)
    again = store.add({"b": 2, "a": 1}, "still bad", 400)
    record = store.get(first)
    assert again == first
    assert record is not None
    assert (record.attempts, record.error, record.status) == (2, "still bad", 400)
    assert record.last_failed_at >= record.first_failed_at
    assert store.count() == 1


def test_remove_and_purge(store: DeadLetterStore) -> None:
    """remove deletes the given ids (reporting how many existed); purge deletes the rest."""
    ids = store.add_many([(op(i), "bad", 422) for i in range(5)])
    assert store.remove([ids[0], ids[1], 12345]) == 2
    assert store.count() == 3
    assert store.purge() == 3
    assert store.count() == 0


def test_replay_into_the_spool_then_remove(
    store: DeadLetterStore, make_spool: SpoolFactory
) -> None:
    """take_for_replay hands back ops to re-enqueue; after remove() nothing is left."""
    store.add_many([(op(i), "bad", 422) for i in range(5)])
    spool = make_spool()
    chosen = store.take_for_replay([1, 3])
    assert [r.op["seq"] for r in chosen] == [0, 2]
    for _ in range(10):
        page = store.take_for_replay(limit=2)
        if not page:
            break
        spool.put_group([r.op for r in page])
        store.remove(r.id for r in page)
    assert store.count() == 0
    assert all_seqs(spool) == [0, 1, 2, 3, 4]


def test_records_survive_reopen_and_use_wal_full_sync(tmp_path: Path) -> None:
    """Records are on disk after close; the file is WAL and each connection syncs FULL."""
    path = tmp_path / "dl" / "deadletter.db"
    with DeadLetterStore(path) as s:
        s.add(op(7), "bad", 422)
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    with DeadLetterStore(path) as s:
        assert [r.op["seq"] for r in s.list()] == [7]
    with closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    """A CLI process and the daemon can add at the same time: SQLite locking, no loss."""
    path = tmp_path / "deadletter.db"
    script = (
        "import sys\n"
        "from spoold.spool import DeadLetterStore\n"
        "with DeadLetterStore(sys.argv[1]) as s:\n"
        "    for i in range(200):\n"
        "        s.add({'from': 'child', 'i': i}, 'bad', 422)\n"
    )
    with DeadLetterStore(path) as s:
        child = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=REPO)
        try:
            for i in range(200):
                s.add({"from": "parent", "i": i}, "bad", 422)
        finally:
            assert child.wait(timeout=30) == 0
        assert s.count() == 400


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A dead-letter file from a newer spoold is refused rather than misread."""
    path = tmp_path / "deadletter.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA user_version = 9")
    with pytest.raises(SpoolFormatError, match="schema 9"):
        DeadLetterStore(path)
