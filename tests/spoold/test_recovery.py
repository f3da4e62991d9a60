"""Start-up repair between the spool and the runs index (``spoold.state.recovery.reconcile``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory, accept, clear_acked_now
from structlog.testing import capture_logs

from spoold.accept.acceptor import Acceptor
from spoold.spool import Spool, SpoolGroup
from spoold.state import recovery
from spoold.state.ledger import Counts, Ledger
from spoold.state.recovery import reconcile
from spoold.state.runs_index import RunsIndex, op_counts

IndexFactory = Callable[[], RunsIndex]
RECOVERY_EVENTS = {
    "spool_delivered_items_acked",
    "runs_index_caught_up",
    "spool_operations_lost",
    "accounting_mismatch",
}


def create(name: str) -> dict[str, Any]:
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}


def update(name: str, **changes: Any) -> dict[str, Any]:
    return {"kind": "update", "event_id": name, "body": changes}


@pytest.fixture
def open_index(tmp_path: Path) -> Iterator[IndexFactory]:
    """Open the runs index beside the spool (again, for a restart); all closed at the end."""
    opened: list[RunsIndex] = []

    def factory() -> RunsIndex:
        index = RunsIndex(tmp_path / "index.sqlite")
        opened.append(index)
        return index

    yield factory
    for index in opened:
        index.close()


def settle(index: RunsIndex, groups: list[SpoolGroup], dead: frozenset[str] = frozenset()) -> None:
    """The drainer's first step: the settle commit naming the groups (no spool ack yet)."""
    ops = [op for group in groups for op in group.ops]
    index.settle(
        op_counts(o for o in ops if o["event_id"] not in dead),
        op_counts(o for o in ops if o["event_id"] in dead),
        [group.id for group in groups],
    )


def restart(
    spool: Spool, index: RunsIndex, make_spool: SpoolFactory, open_index: IndexFactory
) -> tuple[Spool, RunsIndex]:
    spool.close()
    index.close()
    return make_spool(), open_index()


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_unrecorded_items_are_folded_into_the_index(
    make_spool: SpoolFactory, open_index: IndexFactory
) -> None:
    """Items spooled after the index's last_spooled_id (crash before the index commit) are
    counted as accepted, their runs pending, and the mark moves past them - once."""
    spool, index = make_spool(), open_index()
    await accept(spool, index, create("a"))
    spool.put_group([update("a", status="done"), create("b")])  # crash: no index commit
    spool, index = restart(spool, index, make_spool, open_index)
    assert (index.last_spooled_id(), index.get("b")) == (1, None)

    with capture_logs() as logs:
        counts = reconcile(spool, index)

    assert counts == Counts(accepted=3, queued=3)
    assert counts.adds_up
    assert index.counters()["accepted"] == 3
    assert index.last_spooled_id() == 2
    run_a, run_b = index.get("a"), index.get("b")
    assert run_a is not None
    assert run_b is not None
    assert (run_a.pending, run_a.has_create, run_a.snapshot["status"]) == (2, True, "done")
    assert (run_b.pending, run_b.has_create, run_b.snapshot["run_id"]) == (1, True, "r-b")
    assert [e["operations"] for e in events(logs, "runs_index_caught_up")] == [2]
    assert reconcile(spool, index) == counts  # folded once, not at every start


async def test_settled_items_still_in_the_spool_are_discarded(
    make_spool: SpoolFactory, open_index: IndexFactory
) -> None:
    """settling_ids still live are acked without counting them again; ids already gone
    are skipped; what was never settled stays queued."""
    spool, index = make_spool(), open_index()
    await accept(spool, index, create("a"), create("b"), create("c"))
    groups = spool.get_groups(2)
    assert [g.id for g in groups] == [1, 2]
    settle(index, groups, dead=frozenset({"b"}))
    spool.ack(groups[:1])  # crash between the two acks: item 1 acked, item 2 not
    clear_acked_now(spool)  # item 1's row is gone from the file
    spool, index = restart(spool, index, make_spool, open_index)
    assert index.settling_ids() == [1, 2]
    assert spool.stats().depth_ops == 2

    with capture_logs() as logs:
        counts = reconcile(spool, index)

    assert counts == Counts(accepted=3, forwarded=1, queued=1, dead_lettered=1)
    assert counts.adds_up
    assert (index.counters()["forwarded"], index.counters()["dead_lettered"]) == (1, 1)
    assert [e["items"] for e in events(logs, "spool_delivered_items_acked")] == [1]
    assert spool.stats().depth_ops == 1
    assert [op["event_id"] for g in spool.get_groups(100) for op in g.ops] == ["c"]
    assert reconcile(spool, index) == counts  # already acked: nothing to discard again


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
async def test_replaced_spool_forgets_lost_runs_and_counts_them(
    damage: str, spool_dir: Path, make_spool: SpoolFactory, open_index: IndexFactory
) -> None:
    """A new spool file (deleted, or corrupt and renamed aside) voids the marks; queued
    operations are counted dead-lettered and quarantined and their runs forgotten."""
    spool, index = make_spool(), open_index()
    await accept(spool, index, create("a"), create("b"), update("b", status="done"), create("c"))
    delivered = spool.get_groups(1)
    settle(index, delivered)
    spool.ack(delivered)
    spool.close()
    index.close()
    if damage == "deleted":
        shutil.rmtree(spool_dir)
    else:
        for side in ("-wal", "-shm"):
            (spool_dir / f"spool.db{side}").unlink(missing_ok=True)
        (spool_dir / "spool.db").write_bytes(b"not a database at all" * 200)
    spool, index = make_spool(), open_index()
    assert (spool.quarantined_to is not None) == (damage == "corrupt")
    assert (index.last_spooled_id(), index.settling_ids()) == (4, [1])

    with capture_logs() as logs:
        counts = reconcile(spool, index)

    assert counts == Counts(accepted=4, forwarded=1, dead_lettered=3, quarantined=3)
    assert counts.adds_up
    assert (index.last_spooled_id(), index.settling_ids()) == (0, [])
    assert index.get("b") is None
    assert index.get("c") is None
    kept = index.get("a")
    assert kept is not None
    assert kept.pending == 0
    lost = events(logs, "spool_operations_lost")
    assert [(e["operations"], e["runs"]) for e in lost] == [(3, 2)]
    renamed = str(spool.quarantined_to) if spool.quarantined_to else None
    assert lost[0]["renamed_to"] == renamed

    ledger = Ledger(counts)
    acceptor = Acceptor(spool, index, ledger)
    acceptor.start()
    try:
        assert (await acceptor.submit(create("b"))).outcome == "created"  # can be sent again
    finally:
        await acceptor.close()
    assert ledger.snapshot().adds_up
    spool, index = restart(spool, index, make_spool, open_index)
    again = reconcile(spool, index)  # the new file is the spool now: nothing more is lost
    assert again == Counts(accepted=5, forwarded=1, queued=1, dead_lettered=3, quarantined=3)


def test_reconcile_of_fresh_files_is_empty(
    make_spool: SpoolFactory, open_index: IndexFactory
) -> None:
    """A new spool and a new index: all counts zero, no marks, nothing logged."""
    spool, index = make_spool(), open_index()
    with capture_logs() as logs:
        assert reconcile(spool, index) == Counts()
    assert (index.last_spooled_id(), index.settling_ids()) == (0, [])
    assert [e for e in logs if e["event"] in RECOVERY_EVENTS] == []


async def test_reconcile_of_consistent_files_changes_nothing(
    make_spool: SpoolFactory, open_index: IndexFactory
) -> None:
    """After complete accept and drain cycles, reconcile only reads: same counters, marks,
    runs and spool contents, and no repair logged."""
    spool, index = make_spool(), open_index()
    await accept(spool, index, create("a"), create("b"), update("b", status="done"))
    delivered = spool.get_groups(1)
    settle(index, delivered)
    spool.ack(delivered)
    spool, index = restart(spool, index, make_spool, open_index)
    counters, runs = index.counters(), [index.get(name) for name in "ab"]

    with capture_logs() as logs:
        counts = reconcile(spool, index)

    assert counts == Counts(accepted=3, forwarded=1, queued=2)
    assert index.counters() == counters
    assert [index.get(name) for name in "ab"] == runs
    assert (index.last_spooled_id(), index.settling_ids()) == (3, [1])
    assert [e for e in logs if e["event"] in RECOVERY_EVENTS] == []
    assert [(g.id, len(g.ops)) for g in spool.get_groups(100)] == [(2, 1), (3, 1)]


def test_fold_reads_the_spool_in_chunks(
    monkeypatch: pytest.MonkeyPatch, make_spool: SpoolFactory, open_index: IndexFactory
) -> None:
    """With FOLD_CHUNK=2, five unrecorded items are read two at a time and all folded."""
    monkeypatch.setattr(recovery, "FOLD_CHUNK", 2)
    spool, index = make_spool(), open_index()
    for k in range(5):
        spool.put_group([create(f"e{k}")] * (k + 1))  # item k+1 holds k+1 operations
    reads: list[tuple[int, int, int]] = []
    items_after = spool.items_after

    def recording(item_id: int, limit: int) -> tuple[int, list[SpoolGroup]]:
        scanned_to, items = items_after(item_id, limit)
        reads.append((item_id, limit, len(items)))
        return scanned_to, items

    monkeypatch.setattr(spool, "items_after", recording)

    counts = reconcile(spool, index)

    assert reads == [(0, 2, 2), (2, 2, 2), (4, 2, 1), (5, 2, 0)]
    assert counts == Counts(accepted=15, queued=15)
    assert index.last_spooled_id() == 5
    pending = [run.pending if (run := index.get(f"e{k}")) else None for k in range(5)]
    assert pending == [1, 2, 3, 4, 5]


async def test_an_older_spool_copy_put_back_never_reuses_ids_the_index_saw(
    spool_dir: Path, make_spool: SpoolFactory, open_index: IndexFactory, tmp_path: Path
) -> None:
    """Spool ids are the drainer's snapshot sequences, which the server compares per run:
    after an older copy of the spool file is put back under a current index, new items
    get ids above every id the index recorded, never one it saw."""
    spool, index = make_spool(), open_index()
    reconcile(spool, index)  # as at every start: the index records the spool's identity
    await accept(spool, index, create("a"))
    spool.close()
    saved = tmp_path / "older-copy"
    shutil.copytree(spool_dir, saved)
    spool = make_spool()
    reconcile(spool, index)
    await accept(spool, index, update("a", items_succeeded=1), update("a", items_succeeded=2))
    seen = index.last_spooled_id()
    assert seen == 3
    spool.close()
    shutil.rmtree(spool_dir)
    shutil.copytree(saved, spool_dir)
    spool = make_spool()
    assert spool.last_allocated_id() == 1
    with capture_logs() as logs:
        reconcile(spool, index)
    assert [e for e in logs if e["event"] == "spool_ids_raised"]
    assert spool.last_allocated_id() == seen
    await accept(spool, index, update("a", items_succeeded=3))
    assert index.last_spooled_id() == seen + 1
    # the copy's own item, then the new one above the floor: both handed out, in order
    groups = spool.get_groups(10)
    assert [group.id for group in groups] == [1, seen + 1]
    assert groups[1].ops[0]["body"] == {"items_succeeded": 3}
