"""Two server instances on one PostgreSQL database: what one writes, the other's
in-process metadata and counts show (metadata within 1 s, by LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from server.http.runs import DATABASE
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.schema import MIGRATIONS
from server.postgres.url import parse_url

#: The issue's bound for the metadata cache across replicas.
BOUND_S = 1.0


def _run(event_id: str, agent: str, job: str = "job") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "run_id": f"r-{event_id}",
        "agent_name": agent,
        "job_type": job,
        "start_time": "2026-03-01T11:00:00Z",
    }


async def _within(api: Any, path: str, check: Any, bound_s: float) -> float:
    """Poll ``path`` until ``check(body)``; the seconds it took (fails past the bound)."""
    start = time.monotonic()
    for _ in range(1000):
        body = (await api.request("GET", path)).body
        if check(body):
            return time.monotonic() - start
        assert time.monotonic() - start < bound_s, f"{path}: {body}"
        await asyncio.sleep(0.02)
    raise AssertionError("unreachable")


async def test_a_new_agent_written_on_one_replica_is_listed_by_the_other_within_1s(
    make_api: Any,
) -> None:
    first, second = await make_api(), await make_api()
    listener = second.client.server.app[DATABASE]
    assert isinstance(listener, PostgresDatabase)
    await asyncio.wait_for(listener.snapshots.listening.wait(), 10)
    assert (await second.request("GET", "/api/v1/metadata")).body["agent_names"] == []
    for n in range(3):  # each new name is a fresh notification
        agent, job = f"agent-{n}", f"job-{n}"
        assert (
            await first.request("POST", "/api/v1/runs", json=_run(f"e{n}", agent, job))
        ).status == 201

        def listed(body: Any, agent: str = agent, job: str = job) -> bool:
            return agent in body["agent_names"] and job in body["job_types"]

        await _within(second, "/api/v1/metadata", listed, BOUND_S)
    # The writer lists its own write at once (read-your-writes, no notification needed).
    assert (await first.request("POST", "/api/v1/runs", json=_run("e9", "agent-9"))).status == 201
    assert "agent-9" in (await first.request("GET", "/api/v1/metadata")).body["agent_names"]


async def test_counts_written_on_one_replica_reach_the_others_metrics(make_api: Any) -> None:
    first, second = await make_api(), await make_api()
    for n in range(5):
        await first.request("POST", "/api/v1/runs", json=_run(f"c{n}", "agent"))
    await first.request("PATCH", "/api/v1/runs/c0", json={"status": "success"})
    # The writer counts its own writes at once; the other within the counts' TTL (1 s).
    body = (await first.request("GET", "/metrics")).body
    assert (body["total_runs"], body["runs_by_status"]) == (5, {"running": 4, "success": 1})
    assert body["recent_24h"] == 5

    def counted(body: Any) -> bool:
        return body["total_runs"] == 5 and body["runs_by_status"].get("success") == 1

    await _within(second, "/metrics", counted, 3 * BOUND_S)


async def test_names_whose_runs_are_all_deleted_drop_out(make_api: Any) -> None:
    api = await make_api()
    await api.request("POST", "/api/v1/runs", json=_run("d1", "gone-agent", "gone-job"))
    assert "gone-agent" in (await api.request("GET", "/api/v1/metadata")).body["agent_names"]
    database = api.client.server.app[DATABASE]
    assert isinstance(database, PostgresDatabase)
    async with database.pool.acquire() as conn:
        await conn.execute("DELETE FROM agent_runs WHERE event_id = 'd1'")
    database.snapshots.changed()  # what a prune tells the cache
    body = (await api.request("GET", "/api/v1/metadata")).body
    assert (body["agent_names"], body["job_types"]) == ([], [])


async def test_replicas_starting_together_migrate_once_and_both_serve(pg_url: str) -> None:
    settings = PostgresSettings(url=parse_url(pg_url))
    opened = await asyncio.gather(*(PostgresDatabase.open(settings) for _ in range(3)))
    try:
        async with opened[0].pool.acquire() as conn:
            versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        assert [row[0] for row in versions] == [m.version for m in MIGRATIONS]
        for database in opened:
            await database.ping()
    finally:
        for database in opened:
            await database.close()


async def test_stale_listing_answers_as_on_sqlite(make_api: Any, tmp_path: Path) -> None:
    """``GET /api/v1/runs?stale=true``: running runs past their allowance (own, the job
    type's, or the default), the reaper not having passed yet."""
    settings = {"reaper_interval_s": 86_400, "stale_after_by_job": {"slow": 3600}}
    apis = [
        await make_api(stale_after_s=1, **settings),
        await make_api.sqlite(db_path=tmp_path / "r.sqlite", stale_after_s=1, **settings),
    ]
    for api in apis:
        for event_id, job, own in (
            ("own", "job", 1),
            ("own-long", "job", 3600),
            ("default", "job", None),
            ("slow-job", "slow", None),
            ("finished", "job", 1),
        ):
            run = {**_run(event_id, "agent", job), "heartbeat_timeout_s": own}
            assert (await api.request("POST", "/api/v1/runs", json=run)).status == 201
        await api.request("PATCH", "/api/v1/runs/finished", json={"status": "success"})
    await asyncio.sleep(1.3)
    listed = [
        [run["event_id"] for run in (await api.request("GET", "/api/v1/runs?stale=true")).body]
        for api in apis
    ]
    assert listed[0] == listed[1]
    assert sorted(listed[0]) == ["default", "own"]
    filtered = [
        (await api.request("GET", "/api/v1/runs?stale=true&job_type=slow")).body for api in apis
    ]
    assert filtered == [[], []]
