"""The drainer's folded items do on the real server what the operations did one by one.

``tests/unit/test_heartbeat_folding.py`` checks the folding against a model of the
server; this checks it against the server itself: random interleavings of creates,
updates and heartbeats of two runs are applied to one server through its own endpoints
(POST /runs, PATCH, POST /heartbeat), and to another as spoold would deliver them (the
coalesced upsert items, packed under a small body cap, so some snapshots travel as
their operations); the runs must end equal but for when they were seen.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from server.contract.models import HeartbeatBody, RunCreate
from spoold.forward.coalesce import coalesce, pack
from spoold.spool.operations import create_op, heartbeat_op, update_op

COMPARED = ("status", "metrics_json", "items_succeeded", "items_failed", "error_summary")
BASE = {"a": {"x": 1, "y": 2}, "b": {"z": {"x": 0}}, "c": 3}


def _at(step: int) -> str:
    return f"2026-01-12T10:{step // 60:02d}:{step % 60:02d}.000000+00:00"


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.25:
        return None
    if roll < 0.45 or depth >= 2:
        return rng.randint(0, 3)
    if roll < 0.55:
        return [rng.randint(0, 3)]
    return {rng.choice("xyz"): _value(rng, depth + 1) for _ in range(rng.randint(0, 2))}


def _ops(rng: random.Random, event_ids: list[str]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    step = 0
    for event_id in event_ids:
        body: dict[str, Any] = {
            "event_id": event_id,
            "run_id": f"r-{event_id}",
            "agent_name": "agent",
            "job_type": "job",
            "status": "running",
            "start_time": "2026-01-12T10:00:00Z",
        }
        if rng.random() < 0.5:
            body["metrics_json"] = BASE
        ops.append(create_op(RunCreate.model_validate(body), _at(step)))
    for _ in range(rng.randint(1, 14)):
        step += 1
        event_id = rng.choice(event_ids)
        roll = rng.random()
        if roll < 0.55:
            progress = {rng.choice("abc"): _value(rng) for _ in range(rng.randint(0, 2))}
            ops.append(heartbeat_op(event_id, HeartbeatBody(progress=progress or None), _at(step)))
        elif roll < 0.7:
            status = rng.choice(["success", "failure"])
            ops.append(update_op(event_id, {"status": status}, _at(step)))
        elif roll < 0.85:
            metrics = {**BASE, "m": _value(rng)}
            ops.append(update_op(event_id, {"metrics_json": metrics}, _at(step)))
        else:
            ops.append(update_op(event_id, {"items_succeeded": step}, _at(step)))
    return ops


async def _one_by_one(api: Any, op: dict[str, Any]) -> None:
    event_id = op["event_id"]
    if op["kind"] == "create":
        reply = await api.post("/api/v1/runs", json=op["body"])
    elif op["kind"] == "heartbeat":
        reply = await api.post(
            f"/api/v1/runs/{event_id}/heartbeat", json=op["body"] if op["body"] else None
        )
    else:
        reply = await api.patch(f"/api/v1/runs/{event_id}", json=op["body"])
    assert reply.status in (200, 201, 204), (op, reply.body)


async def test_folded_items_equal_the_operations_on_the_real_server(
    make_api: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    direct = await make_api(db_path=tmp_path / "direct.sqlite")
    sidecar = await make_api(db_path=tmp_path / "sidecar.sqlite")
    rng = random.Random(11)
    for case in range(120):
        event_ids = [f"c{case}-a", f"c{case}-b"]
        ops = _ops(rng, event_ids)
        for op in ops:
            await _one_by_one(direct, op)
        cap = rng.choice([400, 1 << 20])  # small: some snapshots go as their operations
        for _, body in pack(coalesce(ops), ops, cap):
            reply = await sidecar.post(
                "/api/v1/runs/batch?mode=upsert",
                data=body,
                headers={"Content-Type": "application/json", "X-Spoold-Id": "sc-1"},
            )
            assert reply.status == 200, reply.body
            assert reply.body["errors"] == [], (ops, reply.body)
        for event_id in event_ids:
            one = await direct.run(event_id)
            folded = await sidecar.run(event_id)
            want = {key: one.get(key) for key in COMPARED}
            got = {key: folded.get(key) for key in COMPARED}
            assert got == want, orjson.dumps({"ops": ops, "want": want, "got": got}).decode()
