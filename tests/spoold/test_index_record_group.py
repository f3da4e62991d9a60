"""A group of writes is classified in the runs index with one read and one write per run.

``RunsIndex.record_group`` must give exactly the outcomes and rows that recording the
operations one by one gave (the per-operation algorithm is kept here as the oracle):
duplicates, updates before their create, unconfirmed and verified updates, several
operations of one run in one group, runs already known in every state.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson

from spoold.state.runs_index import CONFIRMED, CREATED, UNCONFIRMED, RunsIndex


def oracle_record(index: RunsIndex, op: dict[str, Any], verified: bool) -> tuple[str, Any]:
    """The per-operation classification spoold used before groups (one SELECT, one upsert)."""
    conn = index._conn
    event_id = op["event_id"]
    row = conn.execute(
        "SELECT snapshot, has_create FROM runs WHERE event_id = ?", (event_id,)
    ).fetchone()

    def upsert(snapshot: dict[str, Any], state: int) -> None:
        conn.execute(
            "INSERT INTO runs (event_id, snapshot, has_create, pending, touched_at)"
            " VALUES (?, ?, ?, 1, ?) ON CONFLICT(event_id) DO UPDATE SET"
            " snapshot = excluded.snapshot, has_create = excluded.has_create,"
            " pending = runs.pending + 1, touched_at = excluded.touched_at",
            (event_id, orjson.dumps(snapshot).decode(), state, time.time()),
        )

    if op["kind"] == "create":
        if row is not None and row[1] == CREATED:
            return "duplicate", orjson.loads(row[0]).get("run_id")
        snapshot = dict(op["body"])
        if row is not None:
            snapshot.update(orjson.loads(row[0]))
        upsert(snapshot, CREATED)
        return "created", snapshot.get("run_id")
    unconfirmed = bool(op.get("unconfirmed"))
    if row is None or (row[1] == UNCONFIRMED and not verified):
        if not verified:
            return "unknown", None
        snapshot = orjson.loads(row[0]) if row is not None else {}
        snapshot.update(op["body"])
        state = UNCONFIRMED if unconfirmed else CONFIRMED
        if row is not None and row[1] == CONFIRMED:
            state = CONFIRMED
        upsert(snapshot, state)
        return "accepted", snapshot.get("run_id")
    snapshot = orjson.loads(row[0])
    snapshot.update(op["body"])
    state = row[1] if not (row[1] == UNCONFIRMED and not unconfirmed) else CONFIRMED
    upsert(snapshot, state)
    return "accepted", snapshot.get("run_id")


def random_op(rng: random.Random, runs: list[str]) -> tuple[dict[str, Any], bool]:
    event_id = rng.choice(runs)
    kind = rng.choice(["create", "create", "update", "update", "commit"])
    if kind == "create":
        body: dict[str, Any] = {"event_id": event_id, "status": "running"}
        if rng.random() < 0.8:
            body["run_id"] = f"r-{event_id}-{rng.randint(0, 3)}"
        body["metrics_json"] = {"n": rng.randint(0, 9), "nested": {"x": [1, 2.5, None]}}
    elif kind == "update":
        body = rng.choice(
            [{"status": "success"}, {"run_id": f"r2-{event_id}"}, {"metrics_json": {"m": 1}}, {}]
        )
    else:
        body = {"git_commit_hash": f"{rng.randint(0, 99):040d}"}
    op: dict[str, Any] = {"kind": kind, "event_id": event_id, "body": body, "accepted_at": "t"}
    if kind != "create" and rng.random() < 0.3:
        op["unconfirmed"] = True
    return op, rng.random() < 0.5


def rows(index: RunsIndex) -> list[tuple[Any, ...]]:
    return index._conn.execute(
        "SELECT event_id, snapshot, has_create, pending, complete, letters FROM runs"
        " ORDER BY event_id"
    ).fetchall()


def test_a_group_is_recorded_exactly_as_its_operations_one_by_one(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    one_by_one = RunsIndex(tmp_path / "oracle.sqlite")
    grouped = RunsIndex(tmp_path / "grouped.sqlite")
    runs = [f"run-{i}" for i in range(120)]
    outcomes: set[str] = set()
    states: set[int] = set()
    try:
        for _ in range(60):  # groups of 1..80 operations over 120 runs: many repeats
            group = [random_op(rng, runs) for _ in range(rng.randint(1, 80))]
            one_by_one.begin()
            expected = [oracle_record(one_by_one, op, verified) for op, verified in group]
            one_by_one.commit()
            grouped.begin()
            got = grouped.record_group(group)
            grouped.commit()
            assert got == expected
            assert rows(grouped) == rows(one_by_one)
            outcomes.update(outcome for outcome, _ in got)
            states.update(row[2] for row in rows(grouped))
    finally:
        one_by_one.close()
        grouped.close()
    assert outcomes == {"created", "duplicate", "accepted", "unknown"}
    assert states == {CREATED, CONFIRMED, UNCONFIRMED}  # every state was met


def test_a_large_group_reads_its_runs_in_chunks(tmp_path: Path) -> None:
    """More runs than SQLite takes parameters at once (999 on older builds)."""
    index = RunsIndex(tmp_path / "index.sqlite")
    ops = [
        ({"kind": "create", "event_id": f"e{i}", "body": {"run_id": f"r{i}"}}, False)
        for i in range(2500)
    ]
    try:
        index.begin()
        first = index.record_group(ops)
        index.commit()
        index.begin()
        again = index.record_group(ops)
        index.commit()
        pending = index._conn.execute("SELECT SUM(pending) FROM runs").fetchone()[0]
    finally:
        index.close()
    assert [outcome for outcome, _ in first] == ["created"] * 2500
    assert again == [("duplicate", f"r{i}") for i in range(2500)]
    assert pending == 2500
