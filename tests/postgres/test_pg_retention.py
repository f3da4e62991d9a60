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


async def _seed(api: Any, prefix: str = "") -> None:
    old, new = "2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z"
    runs = [
        (_run(f"{prefix}old-success", old, "gone"), "success"),
        (_run(f"{prefix}old-failure", old, "gone"), "failure"),
        (_run(f"{prefix}old-running", old), None),  # never deleted, however old
        (_run(f"{prefix}new-success", new), "success"),
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


async def _retention(api: Any) -> dict[str, Any]:
    body = (await api.request("GET", "/metrics")).body
    return dict(body["retention"])


async def _until_kept(api: Any, expected: list[str], bound_s: float) -> None:
    for _ in range(int(bound_s / 0.1)):
        if await _kept(api) == expected:
            return
        await asyncio.sleep(0.1)
    assert await _kept(api) == expected


async def test_background_retention_passes_on_one_replica_and_moves_when_it_stops(
    make_api: Any,
) -> None:
    """Only the elected replica prunes (the other counts no pass at all); when the leader
    stops, the other takes the advisory lock at its next pass and prunes from then on."""
    replicas = [await make_api(retention_days=90, retention_interval_s=1) for _ in range(2)]
    await _seed(replicas[0])
    await _until_kept(replicas[0], ["new-success", "old-running"], bound_s=10)
    await asyncio.sleep(2.5)  # two more intervals: the follower would have passed by now
    totals = [await _retention(api) for api in replicas]
    passing = [n for n, total in enumerate(totals) if total["passes"] > 0]
    assert len(passing) == 1, totals
    leader, follower = replicas[passing[0]], replicas[1 - passing[0]]
    assert totals[passing[0]]["deleted_runs"] == 2
    assert totals[1 - passing[0]] == {**totals[1 - passing[0]], "passes": 0, "deleted_runs": 0}

    await leader.client.close()  # its leadership connection goes with it
    await _seed(follower, prefix="b-")
    expected = ["b-new-success", "b-old-running", "new-success", "old-running"]
    await _until_kept(follower, expected, bound_s=15)
    taken_over = await _retention(follower)
    assert taken_over["passes"] > 0
    assert taken_over["deleted_runs"] == 2
