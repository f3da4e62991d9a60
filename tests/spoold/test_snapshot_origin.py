"""Every snapshot the drainer sends carries its origin: the source (this sidecar's id and
its spool file's) and the sequence of its newest operation (spool item id and index).
The sequence must only grow: across rounds, restarts, deletes of acked rows and vacuums;
a replaced spool file (its ids start over) is another source. The split paths (a refused
batch folded again, a snapshot too large sent as its operations) stamp the same way."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
from spool_helpers import SpoolFactory
from test_drain_read_stage import Downstream
from test_index_corruption import _sequence_table_damaged

from server.contract.fields import SQLITE_INT_MAX
from server.contract.models import UpsertItem
from spoold.forward.coalesce import (
    OPS_PER_GROUP,
    WIDEST_ORIGIN,
    Origin,
    coalesce,
    op_sequence,
    pack,
)
from spoold.forward.handoff import LocalFaults, Slot, StopClock
from spoold.forward.read import ReadStage
from spoold.forward.rounds import Round, encode_chunk
from spoold.spool import Spool, store
from spoold.upstream.retry import Backoff

SIDECAR = "sidecar-1"


def create(event_id: str, accepted_at: str = "2026-03-01T12:00:00.000000+00:00") -> dict[str, Any]:
    body = {
        "event_id": event_id,
        "run_id": f"run-{event_id}",
        "agent_name": "agent",
        "job_type": "job",
        "start_time": "2026-03-01T11:00:00Z",
    }
    return {"kind": "create", "event_id": event_id, "body": body, "accepted_at": accepted_at}


def update(event_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "update",
        "event_id": event_id,
        "body": fields,
        "accepted_at": "2026-03-01T12:00:01.000000+00:00",
    }


def beat(event_id: str, progress: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "heartbeat",
        "event_id": event_id,
        "body": {"progress": progress},
        "accepted_at": "2026-03-01T12:00:02.000000+00:00",
    }


def read_round(spool: Spool, *, batch_size: int = 1000, max_bytes: int = 1 << 20) -> Round:
    clock = StopClock()

    async def idle() -> None:
        await asyncio.sleep(0)

    stage = ReadStage(
        spool,
        Slot(),
        clock,
        LocalFaults(Backoff(base_s=0.01, cap_s=0.01), clock),
        Downstream(),
        idle,
        batch_size=batch_size,
        batch_max_bytes=max_bytes,
        sidecar_id=SIDECAR,
    )
    return stage.read_round()


def items_of(round_: Round) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for _, body in round_.batches:
        assert body is not None
        items += orjson.loads(body)
    for item in items:  # what the server validates
        UpsertItem.model_validate(item)
    return items


def test_op_sequence_orders_as_group_then_index_and_never_overflows() -> None:
    assert op_sequence(1, 0) < op_sequence(1, 1) < op_sequence(2, 0)
    assert op_sequence(3, OPS_PER_GROUP + 5) == op_sequence(3, OPS_PER_GROUP - 1)
    assert op_sequence(3, OPS_PER_GROUP - 1) < op_sequence(4, 0)
    assert op_sequence(2**62, 7) == SQLITE_INT_MAX


def test_a_snapshot_carries_its_newest_operations_sequence() -> None:
    ops = [create("a"), create("b"), update("a", items_succeeded=1), update("b", status="success")]
    origin = Origin("s/1", [10, 11, 12, 13])
    items = {s.event_id: s.upsert_item() for s in coalesce(ops, origin)}
    assert (items["a"]["source"], items["a"]["sequence"]) == ("s/1", 12)
    assert (items["b"]["source"], items["b"]["sequence"]) == ("s/1", 13)
    # without an origin (a test, an older caller): no stamp at all
    assert all("source" not in s.upsert_item() for s in coalesce(ops))


def test_a_runs_second_snapshot_in_a_round_is_newer_than_its_first() -> None:
    """Two heartbeat patches that cannot be composed make two snapshots of one run: the
    second must win on the server, so it carries the greater sequence."""
    ops = [beat("a", {"k": {"x": 1}}), beat("a", {"k": 5}), beat("a", {"k": {"y": 2}})]
    snapshots = coalesce(ops, Origin("s/1", [7, 8, 9]))
    assert len(snapshots) >= 2
    sequences = [s.sequence for s in snapshots]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == len(sequences)


def test_a_snapshot_too_large_goes_as_its_operations_each_with_its_own_sequence() -> None:
    big = {"blob": "x" * 3000}
    ops = [create("a"), update("a", metrics_json=big), update("a", items_succeeded=2)]
    origin = Origin("s/1", [100, 101, 102])
    batches = pack(coalesce(ops, origin), ops, 3200, origin)
    items = [item for _, body in batches for item in orjson.loads(body)]
    assert [item["sequence"] for item in items] == [100, 101, 102]


async def test_sequences_grow_across_rounds_restarts_deletes_and_vacuums(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    seen: list[int] = []
    source = None
    spool = make_spool()
    for cycle in range(3):
        for i in range(5):
            spool.put_group([create(f"c{cycle}-{i}"), update(f"c{cycle}-{i}", items_failed=i)])
        round_ = read_round(spool, batch_size=4)
        items = items_of(round_)
        assert items
        spool.ack(round_.groups)
        round_ = read_round(spool)
        items += items_of(round_)
        spool.ack(round_.groups)
        source = source or items[0]["source"]
        assert {item["source"] for item in items} == {source}
        assert source.startswith(f"{SIDECAR}/")
        seen += [item["sequence"] for item in items]
        # every acked row deleted and the file vacuumed: the ids must not start over
        store.housekeep(spool._queue, spool._side, 0)
        spool.close()
        spool = make_spool()
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert spool.last_allocated_id() == 15
    spool.put_group([create("after")])
    last = items_of(read_round(spool))
    assert last[0]["source"] == source
    assert last[0]["sequence"] > seen[-1]


async def test_a_replaced_spool_file_is_another_source(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    """A spool set aside (damaged) restarts its ids at 1: its snapshots must not be
    judged against the old file's sequences, so they carry another source."""
    spool = make_spool()
    for i in range(3):
        spool.put_group([create(f"r{i}")])
    old = items_of(read_round(spool))
    spool.close()
    _sequence_table_damaged(spool_dir / "spool.db")
    fresh = make_spool()
    assert fresh.quarantined_to is not None
    fresh.put_group([create("new")])
    [item] = items_of(read_round(fresh))
    assert item["source"] != old[0]["source"]
    assert item["source"].startswith(f"{SIDECAR}/")
    assert item["sequence"] < old[-1]["sequence"]  # ids started over: hence a new source


async def test_a_refused_batch_folded_again_keeps_the_stamps(make_spool: SpoolFactory) -> None:
    spool = make_spool()
    spool.put_group([create("a"), update("a", items_succeeded=3)])
    spool.put_group([create("b")])
    round_ = read_round(spool)
    [(chunk, body)] = round_.batches
    assert body is not None
    assert orjson.loads(encode_chunk(chunk, round_.ops)) == orjson.loads(body)
    halves = [encode_chunk([planned], round_.ops) for planned in chunk]
    assert [orjson.loads(h)[0]["sequence"] for h in halves] == [
        item["sequence"] for item in orjson.loads(body)
    ]
    expanded = [
        orjson.loads(encode_chunk([one], round_.ops))[0]["sequence"] for one in chunk[0].expand()
    ]
    assert expanded == sorted(expanded)
    assert len(set(expanded)) == 2


def test_the_spools_id_counter_survives_an_emptied_table(spool_dir: Path) -> None:
    """What the sequences rest on: AUTOINCREMENT keeps the highest id in sqlite_sequence
    after every row is deleted and the file vacuumed (a plain rowid would reuse ids)."""
    path = spool_dir / "probe.sqlite"
    spool_dir.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(i,) for i in range(5)])
        conn.execute("DELETE FROM t")
        conn.execute("VACUUM")
        assert conn.execute("INSERT INTO t (v) VALUES (9) RETURNING id").fetchone() == (6,)


def test_the_widest_source_is_the_widest_spoold_can_send(make_spool: SpoolFactory) -> None:
    """The door judges operations with ``WIDEST_ORIGIN``: a 64-character sidecar id and a
    spool id make a source of exactly its length; anything longer or not of the source's
    alphabet (a hand-edited file) is not stamped at all, never sent longer."""
    spool = make_spool()
    spool.put_group([create("w")])
    clock = StopClock()

    async def idle() -> None:
        await asyncio.sleep(0)

    def stage(sidecar_id: str) -> ReadStage:
        return ReadStage(
            spool,
            Slot(),
            clock,
            LocalFaults(Backoff(base_s=0.01, cap_s=0.01), clock),
            Downstream(),
            idle,
            batch_size=10,
            batch_max_bytes=1 << 20,
            sidecar_id=sidecar_id,
        )

    groups = spool.get_groups(10)
    widest = stage("s" * 64)._origin(groups)
    assert widest is not None
    assert len(widest.source) == len(WIDEST_ORIGIN.source)
    spool.identity = "y" * 40  # not a spool id spoold makes
    assert stage("s" * 64)._origin(groups) is None
    spool.identity = "bad id"
    assert stage("s")._origin(groups) is None
    spool.nack(groups)
