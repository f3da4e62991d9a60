"""PostgreSQL killed while the server runs: every endpoint answers 503 with Retry-After
(or from its cache), never a 500; once PostgreSQL is back the server recovers by
itself, the metadata listener included (a cluster of its own: this test kills it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pg_cluster
import pytest
from structlog.testing import capture_logs

from server.http.runs import DATABASE
from server.postgres.database import PostgresDatabase


@pytest.fixture
def own_cluster() -> Iterator[pg_cluster.Cluster]:
    cluster = pg_cluster.Cluster.start(pg_cluster.require_postgres())
    try:
        yield cluster
    finally:
        cluster.destroy()


def _run(event_id: str, agent: str = "agent") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "run_id": f"r-{event_id}",
        "agent_name": agent,
        "job_type": "job",
        "start_time": "2026-03-01T11:00:00Z",
    }


PATHS = (
    ("POST", "/api/v1/runs"),
    ("PATCH", "/api/v1/runs/before"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/before"),
    ("POST", "/api/v1/runs/batch"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/metadata"),
)


async def _call(api: Any, method: str, path: str, n: int) -> Any:
    body: Any = None
    if path == "/api/v1/runs":
        body = _run(f"during-{n}") if method == "POST" else None
    elif path == "/api/v1/runs/batch":
        body = [_run(f"batch-{n}")]
    elif method == "PATCH":
        body = {"status": "success"}
    return await api.request(method, path, json=body)


@pytest.mark.slow
async def test_postgresql_killed_then_back(make_api: Any, own_cluster: pg_cluster.Cluster) -> None:
    url = own_cluster.url(own_cluster.new_database("outage"))
    api = await make_api.sqlite(database_url=url)
    database = api.client.server.app[DATABASE]
    assert isinstance(database, PostgresDatabase)
    assert (await api.request("POST", "/api/v1/runs", json=_run("before"))).status == 201

    own_cluster.kill9()
    with capture_logs() as logs:
        for n, (method, path) in enumerate(PATHS):
            reply = await _call(api, method, path, n)
            assert reply.status in (200, 503), (method, path, reply.status, reply.text)
            if reply.status == 503:
                assert "Retry-After" in reply.headers or path == "/health", (method, path)
            elif path not in ("/metrics", "/api/v1/metadata"):  # only the caches may answer
                raise AssertionError(f"{method} {path} answered {reply.status} with no database")
    # the operator's log names the failure the fixed 503 text hides
    causes = {entry["cause"] for entry in logs if entry["event"] == "storage_unavailable"}
    assert causes, "no storage_unavailable line"
    assert None not in causes
    health = await api.request("GET", "/health")
    assert (health.status, health.body["status"]) == (503, "unhealthy")

    own_cluster.restart()
    deadline = time.monotonic() + 30
    created = None
    while time.monotonic() < deadline:
        created = await api.request("POST", "/api/v1/runs", json=_run("after", "agent-after"))
        if created.status == 201:
            break
        assert created.status == 503, created.text
        await asyncio.sleep(0.2)
    assert created is not None
    assert created.status == 201
    assert (await api.request("GET", "/health")).status == 200
    assert (await api.request("GET", "/api/v1/runs/before")).status == 200
    # The listener is back: a name another replica writes now is still seen.
    await asyncio.wait_for(database.snapshots.listening.wait(), 15)
    async with database.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, start_time,"
            " created_at) VALUES ('other', 'r', 'agent-other', 'job', 'x', 'y')"
        )
    for _ in range(50):
        names = (await api.request("GET", "/api/v1/metadata")).body["agent_names"]
        if "agent-other" in names:
            break
        await asyncio.sleep(0.05)
    assert "agent-other" in names
