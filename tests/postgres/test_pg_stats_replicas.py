"""Stats on PostgreSQL while 3 app instances (one database, nothing else shared) write:
every read during the writes answers 200 with a consistent answer, and once the writes
end the totals are exact. Hostile query strings never get a 500."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

WRITERS_ROUNDS = 20
JOBS = ("build", "test")


def _run(event_id: str, rng: random.Random) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "run_id": f"run-{event_id}",
        "agent_name": f"agent-{rng.randrange(5)}",
        "job_type": rng.choice(JOBS),
        "start_time": f"2026-03-0{rng.randrange(1, 4)}T{rng.randrange(24):02d}:30:00Z",
        "items_discovered": rng.randrange(100),
    }


async def _write(api: Any, replica: int, expected: dict[str, Any]) -> None:
    """Batches of new runs, then a PATCH finishing half of them; what it wrote, counted."""
    rng = random.Random(replica)
    for round_ in range(WRITERS_ROUNDS):
        runs = [_run(f"r{replica}-{round_}-{n}", rng) for n in range(10)]
        reply = await api.post("/api/v1/runs/batch", json=runs)
        assert reply.status == 200, reply.body
        assert reply.body["inserted"] == len(runs)
        for run in runs:
            expected["runs"] += 1
            expected["discovered"] += run["items_discovered"]
            expected["by_job"][run["job_type"]] = expected["by_job"].get(run["job_type"], 0) + 1
        for run in runs[::2]:
            reply = await api.patch(
                f"/api/v1/runs/{run['event_id']}", json={"status": "success", "duration_ms": 7}
            )
            assert reply.status == 200, reply.body
            expected["success"] += 1


async def test_stats_during_writes_from_3_replicas_end_exact(make_api: Any) -> None:
    apis = [await make_api(reaper_interval_s=3600) for _ in range(3)]
    expected: dict[str, Any] = {"runs": 0, "discovered": 0, "success": 0, "by_job": {}}
    done = asyncio.Event()
    reads = 0

    async def read(api: Any) -> None:
        nonlocal reads
        last = 0
        for _ in range(10_000):
            if done.is_set():
                return
            reply = await api.get("/api/v1/stats", params={"group_by": "status"})
            assert reply.status == 200, reply.body
            total = sum(group["runs"] for group in reply.body["groups"])
            assert total >= last  # runs are only added: a snapshot never goes back
            last = total
            reads += 1
            await asyncio.sleep(0.01)

    readers = [asyncio.create_task(read(api)) for api in apis]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(_write(api, n, expected) for n, api in enumerate(apis))), 120
        )
    finally:
        done.set()
        await asyncio.gather(*readers)
    assert reads > 0
    for api in apis:
        (group,) = (await api.get("/api/v1/stats")).body["groups"]
        assert group["runs"] == expected["runs"] == 3 * WRITERS_ROUNDS * 10
        assert group["items"]["discovered"] == expected["discovered"]
        assert group["by_status"]["success"] == expected["success"]
        assert group["by_status"]["running"] == expected["runs"] - expected["success"]
        assert group["duration_ms"]["count"] == expected["success"]
        by_job = (await api.get("/api/v1/stats", params={"group_by": "job_type"})).body
        assert {g["key"]["job_type"]: g["runs"] for g in by_job["groups"]} == expected["by_job"]


HOSTILE = (
    "",
    "\x00",
    "'; DROP TABLE agent_runs; --",
    "$1",
    "%s",
    "🚀" * 100,
    "agent-a",
    "success",
    "job_type,hour,status",
    "2026-03-01T00:00:00",
    "2026-13-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "true",
    "day,hour",
    "agent_name,agent_name",
    ",",
    "\uffff",
    "-1",
    "1e400",
)
PARAMS = (
    "group_by",
    "agent_name",
    "job_type",
    "status",
    "created_before",
    "created_after",
    "start_time_from",
    "start_time_to",
    "stale",
)


@pytest.mark.parametrize("seed", range(3))
async def test_hostile_stats_parameters_never_500(make_api: Any, new_run: Any, seed: int) -> None:
    api = await make_api()
    await api.post("/api/v1/runs/batch", json=[new_run(status="success", duration_ms=5)])
    rng = random.Random(seed)
    for _ in range(60):
        params = {name: rng.choice(HOSTILE) for name in rng.sample(PARAMS, rng.randrange(1, 5))}
        reply = await api.get("/api/v1/stats", params=params)
        assert reply.status in (200, 422), (params, reply.status, reply.body)
