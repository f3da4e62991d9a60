"""Durability settings are the spool's own, and a settle the index lost is made good.

The spool sets ``synchronous=FULL`` on every connection to its file (persist-queue's
included) instead of trusting the SQLite build's default; the drainer's runs-index
connection settles with FULL too, so a power loss cannot keep a spool ack and drop the
settle before it. If an index disagrees with the spool all the same (an old copy put
back), start-up recomputes the pending state from the spool.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory, accept, op
from structlog.testing import capture_logs

from spoold.state.ledger import Counts
from spoold.state.recovery import reconcile
from spoold.state.runs_index import RunsIndex, op_counts
from spoold.state.storage import INDEX_FILE, open_storage

FULL, NORMAL = 2, 1


@pytest.fixture
def build_default_normal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new SQLite connection starts at synchronous=NORMAL, as on builds compiled
    with SQLITE_DEFAULT_WAL_SYNCHRONOUS=1 (this machine's build defaults to FULL)."""
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


@pytest.mark.usefixtures("build_default_normal")
def test_every_spool_connection_is_full_whatever_the_build_default(
    make_spool: SpoolFactory,
) -> None:
    """persist-queue's getter and putter, the side connection and the checkpointer all
    read back synchronous=FULL, before and after puts and a reopen."""
    spool = make_spool()
    modes = spool.synchronous_modes()
    assert len(modes) == 4  # queue getter + putter, side, checkpointer
    assert modes == [FULL] * 4
    spool.put_group([op(1)])
    spool.ack(spool.get_groups(10))
    assert spool.synchronous_modes() == [FULL] * 4
    spool.close()
    assert make_spool().synchronous_modes() == [FULL] * 4


@pytest.mark.usefixtures("build_default_normal")
def test_the_index_connections_are_normal_and_the_drains_settles_fsync_after(
    tmp_path: Path,
) -> None:
    """open_storage: every connection of the runs index is NORMAL; the accept's and the
    reads' commits are repaired from the spool, the drainer's settles are fsync'd after
    their commit, outside the write gate (``tests/spoold/test_fsync_outside_locks.py``)."""
    storage = open_storage(tmp_path / "spool", capacity_bytes=1 << 20, min_free_disk_bytes=0)
    spool, accept_index, drain_index = storage.spool, storage.accept_index, storage.drain_index
    reader = storage.reader_index
    try:
        assert spool.synchronous_modes() == [FULL] * 4
        assert (accept_index.synchronous(), drain_index.synchronous()) == (NORMAL, NORMAL)
        assert reader.synchronous() == NORMAL
    finally:
        storage.close()


def create(name: str) -> dict[str, Any]:
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}


def update(name: str, **changes: Any) -> dict[str, Any]:
    return {"kind": "update", "event_id": name, "body": changes}


@pytest.fixture
def index_path(spool_dir: Path) -> Path:
    return spool_dir / INDEX_FILE


@pytest.fixture
def indexes(index_path: Path) -> Iterator[list[RunsIndex]]:
    opened: list[RunsIndex] = []
    yield opened
    for index in opened:
        index.close()


def _copy_index(src: Path, dst: Path) -> None:
    """A consistent copy of a closed (checkpointed) index file."""
    assert not Path(f"{src}-wal").exists()
    shutil.copyfile(src, dst)


async def test_a_lost_settle_is_recounted_from_the_spool(
    make_spool: SpoolFactory, index_path: Path, indexes: list[RunsIndex], tmp_path: Path
) -> None:
    """The index is put back to its state before a settle whose spool ack survived. Start-
    up: counters add up (the ops that left the queue count as forwarded), the delivered
    runs are no longer pending (not answered from stale local state), the queued ones
    are, and the spool still holds exactly the undelivered operations (none re-sent,
    none lost)."""
    spool = make_spool()
    index = RunsIndex(index_path)
    indexes.append(index)
    await accept(spool, index, create("a"), update("a", status="done"), create("b"), create("c"))
    index.close()
    before_settle = tmp_path / "index-before-settle.sqlite"
    _copy_index(index_path, before_settle)
    index = RunsIndex(index_path, synchronous="FULL")
    indexes.append(index)
    delivered = spool.get_groups(3)  # a, a's update, b
    ops = [o for g in delivered for o in g.ops]
    index.settle(op_counts(ops), {}, [g.id for g in delivered])
    spool.ack(delivered)
    index.close()
    spool.close()
    shutil.copyfile(before_settle, index_path)  # the settle is lost, the ack is not

    spool = make_spool()
    index = RunsIndex(index_path)
    indexes.append(index)
    with capture_logs() as logs:
        counts = reconcile(spool, index)

    assert counts == Counts(accepted=4, forwarded=3, queued=1)
    assert counts.adds_up
    assert [
        e["operations_left_queue"] for e in logs if e["event"] == "runs_index_pending_recounted"
    ] == [3]
    assert [e for e in logs if e["event"] == "accounting_mismatch"] == []
    pending = {name: run.pending for name in "abc" if (run := index.get(name)) is not None}
    assert pending == {"a": 0, "b": 0, "c": 1}
    left = [o["event_id"] for g in spool.get_groups(100) for o in g.ops]
    assert left == ["c"]
    spool.close()
    index.close()
    spool, index = make_spool(), RunsIndex(index_path)
    indexes.append(index)
    assert reconcile(spool, index) == counts  # recounted once, not at every start
