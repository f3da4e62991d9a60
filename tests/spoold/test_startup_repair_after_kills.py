"""Start-up repair between the spool and the runs index (``spoold.state.recovery``) after
a kill -9 at its worst moments: during the repair itself, before a dead-letter replay, and
while settled items are discarded on a full disk."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory, accept, disk_full

from spoold.cli import commands as cli
from spoold.spool import DeadLetterStore, store
from spoold.spool.reserve import MIN_BYTES, RESERVE_FILE
from spoold.state.recovery import reconcile
from spoold.state.runs_index import RunsIndex, op_counts
from spoold.state.storage import DEAD_LETTER_FILE, INDEX_FILE


class Killed(BaseException):
    """Stands in for kill -9 at a given point (nothing after it runs)."""


def create(name: str) -> dict[str, Any]:
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}


@pytest.fixture
def indexes(spool_dir: Path) -> Iterator[list[RunsIndex]]:
    opened: list[RunsIndex] = []
    yield opened
    for index in opened:
        index.close()


def open_index(spool_dir: Path, opened: list[RunsIndex]) -> RunsIndex:
    index = RunsIndex(spool_dir / INDEX_FILE)
    opened.append(index)
    return index


async def test_kill_during_the_repair_of_a_replaced_spool_is_repaired(
    spool_dir: Path,
    make_spool: SpoolFactory,
    indexes: list[RunsIndex],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The repair of a replaced spool is one commit: a kill -9 before it commits leaves
    it to the next start, which still sees the spool as replaced and repairs it."""
    spool, index = make_spool(), open_index(spool_dir, indexes)
    await accept(spool, index, create("a"), create("b"))
    spool.close()
    index.close()
    for side in ("-wal", "-shm"):
        (spool_dir / f"spool.db{side}").unlink(missing_ok=True)
    (spool_dir / "spool.db").write_bytes(b"not a database at all" * 200)

    spool, index = make_spool(), open_index(spool_dir, indexes)
    assert spool.quarantined_to is not None

    real_commit = index.commit

    def killed() -> None:
        raise Killed  # "kill -9" just before the repair's commit

    monkeypatch.setattr(index, "commit", killed)
    with pytest.raises(Killed):
        reconcile(spool, index)
    monkeypatch.setattr(index, "commit", real_commit)
    index.rollback()
    monkeypatch.undo()
    spool.close()
    index.close()

    spool, index = make_spool(), open_index(spool_dir, indexes)
    counts = reconcile(spool, index)

    assert counts.adds_up, counts
    assert counts.quarantined == 2
    assert index.get("a") is None  # so that a re-sent create is forwarded again


async def test_replay_does_not_hide_an_unrecorded_item_from_startup_repair(
    spool_dir: Path, make_spool: SpoolFactory, indexes: list[RunsIndex]
) -> None:
    """An item spooled but not recorded in the index (kill -9 between the two) is still
    found by the next start's repair after a replay has put letters behind it."""
    spool, index = make_spool(), open_index(spool_dir, indexes)
    await accept(spool, index, create("a"))
    spool.put_group([create("b")])  # kill -9 after the spool put, before the index commit
    spool.close()
    index.close()
    with DeadLetterStore(spool_dir / DEAD_LETTER_FILE) as store:
        store.add_many(
            [({"kind": "update", "event_id": "a", "body": {"status": "success"}}, "refused", 422)]
        )

    assert cli.deadletter_replay(spool_dir, None, out=io.StringIO()) == 0

    spool, index = make_spool(), open_index(spool_dir, indexes)
    counts = reconcile(spool, index)

    assert counts.queued == 3
    assert counts.adds_up, counts
    assert index.get("b") is not None


async def test_startup_discard_on_a_full_disk_uses_the_reserve(
    spool_dir: Path,
    make_spool: SpoolFactory,
    indexes: list[RunsIndex],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settled items left in the spool (kill -9 before the ack) are discarded at start-up
    even when the disk is full: the reserve file is given up to make the ack fit."""
    spool, index = make_spool(reserve_bytes=MIN_BYTES), open_index(spool_dir, indexes)
    await accept(spool, index, create("a"), create("b"))
    groups = spool.get_groups(100)
    ops = [op for group in groups for op in group.ops]
    index.settle(op_counts(ops), {}, [group.id for group in groups])  # then kill -9: no ack
    spool.close()
    index.close()

    spool, index = make_spool(reserve_bytes=MIN_BYTES), open_index(spool_dir, indexes)
    assert (spool_dir / RESERVE_FILE).exists()
    real_delete = store.delete_rows
    calls: list[list[int]] = []

    def delete_full_once(queue: Any, side: Any, ids: list[int]) -> int:
        calls.append(list(ids))
        if len(calls) == 1:
            raise disk_full()
        return real_delete(queue, side, ids)

    monkeypatch.setattr(store, "delete_rows", delete_full_once)
    counts = reconcile(spool, index)

    assert calls == [calls[0], calls[0]]  # the full disk, then the same delete again
    assert counts.adds_up
    assert counts.queued == 0
    assert not (spool_dir / RESERVE_FILE).exists()
