"""The issue's idempotency case through the HTTP API: 100 concurrent creates of one
event_id spread over 3 server apps (each with its own asyncpg pool) on one PostgreSQL
database answer exactly one ``created`` and 99 ``duplicate``, and store one row."""

from __future__ import annotations

import asyncio
from typing import Any

from server.http.runs import DATABASE
from server.postgres.database import PostgresDatabase

CREATES = 100


async def test_100_concurrent_creates_over_3_replicas_answer_1_created_99_duplicate(
    make_api: Any,
) -> None:
    replicas = [await make_api() for _ in range(3)]
    pools = {id(api.client.server.app[DATABASE].pool) for api in replicas}
    assert len(pools) == 3
    assert all(isinstance(api.client.server.app[DATABASE], PostgresDatabase) for api in replicas)
    run = {
        "event_id": "one-event?%#",  # reserved URL characters travel as data
        "run_id": "r-1",
        "agent_name": "agent",
        "job_type": "job",
        "start_time": "2026-03-01T11:00:00Z",
    }
    answers = await asyncio.gather(
        *(replicas[n % 3].request("POST", "/api/v1/runs", json=run) for n in range(CREATES))
    )
    assert {answer.status for answer in answers} == {201}
    kinds = [answer.body["status"] for answer in answers]
    assert kinds.count("created") == 1
    assert kinds.count("duplicate") == CREATES - 1
    created = next(answer.body for answer in answers if answer.body["status"] == "created")
    assert created == {"status": "created", "event_id": run["event_id"], "run_id": "r-1"}
    for api in replicas:  # every replica reads the one row
        listed = (await api.request("GET", "/api/v1/runs?agent_name=agent")).body
        assert [row["event_id"] for row in listed] == [run["event_id"]]
    metrics = [(await api.request("GET", "/metrics")).body for api in replicas]
    assert {body["total_runs"] for body in metrics} == {1}
