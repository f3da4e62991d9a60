"""Retention on PostgreSQL: the prune endpoint and the background pass delete what
SQLite's do (old finished runs only), and the caches forget what went."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

PRUNE = "/api/v1/maintenance/prune"


def _run(event_id: str, created_at: str, agent: str = "agent") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "run_id": f"r-{event_id}",
        "agent_name": agent,
        "job_type": "job",
        "start_time": created_at,
        "created_at": created_at,
    }


async def _seed(api: Any) -> None:
    old, new = "2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z"
    runs = [
        (_run("old-success", old, "gone"), "success"),
        (_run("old-failure", old, "gone"), "failure"),
        (_run("old-running", old), None),  # never deleted, however old
        (_run("new-success", new), "success"),
    ]
    for run, status in runs:
        assert (await api.request("POST", "/api/v1/runs", json=run)).status == 201
        if status is not None:
            changes = {"status": status, "end_time": run["created_at"]}
            path = f"/api/v1/runs/{run['event_id']}"
            assert (await api.request("PATCH", path, json=changes)).status == 200


async def _kept(api: Any) -> list[str]:
    return sorted(run["event_id"] for run in (await api.request("GET", "/api/v1/runs")).body)


async def test_prune_endpoint_answers_as_on_sqlite(make_api: Any, tmp_path: Path) -> None:
    postgres = await make_api()
    sqlite = await make_api.sqlite(db_path=tmp_path / "reference.sqlite")
    answers = []
    for api in (postgres, sqlite):
        await _seed(api)
        dry = await api.request("POST", PRUNE, json={"older_than": "90d", "dry_run": True})
        done = await api.request("POST", PRUNE, json={"older_than": "90d"})
        answers.append(
            (
                dry.status,
                dry.body["deleted"],
                dry.body["by_status"],
                done.status,
                done.body["deleted"],
                done.body["by_status"],
                await _kept(api),
            )
        )
    assert answers[0] == answers[1]
    assert answers[0][-1] == ["new-success", "old-running"]
    metadata = (await postgres.request("GET", "/api/v1/metadata")).body
    assert metadata["agent_names"] == ["agent"]  # "gone" had only deleted runs
    metrics = (await postgres.request("GET", "/metrics")).body
    assert metrics["total_runs"] == 2
    assert metrics["retention"]["deleted_runs"] == 2


async def test_background_retention_runs_on_the_leader(make_api: Any) -> None:
    # Two replicas with retention on: the leader's pass deletes (each asks before its
    # pass; the other's asks are refused while the leader lives).
    api = await make_api(retention_days=90, retention_interval_s=1)
    await make_api(retention_days=90, retention_interval_s=1)
    await _seed(api)
    for _ in range(100):
        if await _kept(api) == ["new-success", "old-running"]:
            break
        await asyncio.sleep(0.1)
    assert await _kept(api) == ["new-success", "old-running"]
