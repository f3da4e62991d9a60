"""/api/v1/metadata comes from distinct values the writer keeps: exact, no query, current."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from typing import Any

import pytest

from server.contract.models import RunCreate
from server.contract.timestamps import utc_now
from server.http.runs import DATABASE
from server.storage import runs
from tests.sql_trace import every_statement
from tests.stored_rows import fetch, is_postgres

AGENTS = ("alpha", "beta", "gamma", "delta", "héllo ✓", "Zed", "a b")
JOBS = ("build", "test", "deploy", "Lint", "ünïcode")


class Rollback(Exception):
    """Raised by an operation after it wrote: its savepoint is rolled back."""


async def truth(api: Any) -> dict[str, Any]:
    """What SELECT DISTINCT says on a connection of its own (either backend), shaped as
    the answer."""
    agents = [
        r[0] for r in await fetch(api, "SELECT DISTINCT agent_name FROM agent_runs ORDER BY 1")
    ]
    jobs = [r[0] for r in await fetch(api, "SELECT DISTINCT job_type FROM agent_runs ORDER BY 1")]
    return {
        "agent_names": agents,
        "job_types": jobs,
        "counts": {"agent_names": len(agents), "job_types": len(jobs)},
        "cache_hit": True,
    }


async def random_writes(api: Any, new_run: Any, seed: int, steps: int) -> None:
    """Creates, renaming PATCHes, batches, upserts (renaming too) and rolled-back savepoints,
    ten at a time; fresh values appear and the last run of a value is often renamed away."""
    rng = random.Random(seed)
    known: list[str] = []
    database = api.client.server.app[DATABASE]
    pg = is_postgres(api)

    def agent() -> str:
        return rng.choice(AGENTS) if rng.random() < 0.7 else f"agent-{seed}-{rng.randrange(40)}"

    def job() -> str:
        return rng.choice(JOBS) if rng.random() < 0.7 else f"job-{seed}-{rng.randrange(20)}"

    def run() -> dict[str, Any]:
        return dict(new_run(agent_name=agent(), job_type=job()))

    def rolled_back() -> Any:
        params = [
            runs.insert_params(
                RunCreate.model_validate(new_run(agent_name="ghost-agent", job_type="ghost-job")),
                utc_now(),
            )
            for _ in range(rng.randint(1, 4))
        ]

        def write(conn: sqlite3.Connection) -> None:
            runs.insert_rows(conn, params)  # rows written, triggers fired ...
            conn.execute("UPDATE agent_runs SET agent_name = 'ghost-rename', job_type = 'g'")
            conn.execute("DELETE FROM agent_runs WHERE rowid % 2 = 0")
            raise Rollback  # ... and the savepoint undone

        return database.writer.run(write)

    async def one() -> None:
        # A savepoint rolled back after writing is SQLite's writer (PostgreSQL has none:
        # each request is its own transaction there).
        kinds = ("create", "rename", "batch", "upsert") + (() if pg else ("rollback",))
        kind = rng.choice(kinds)
        # A run is known (renamed, repeated) once its create is answered: sent at the same
        # time, a PATCH may be applied first (on PostgreSQL, each on its own connection).
        if kind == "create" or not known:
            created = run()
            assert (await api.post("/api/v1/runs", json=created)).status == 201
            known.append(created["event_id"])
        elif kind == "rename":
            change = rng.choice(
                [
                    {"agent_name": agent()},
                    {"job_type": job()},
                    {"agent_name": agent(), "job_type": job()},
                ]
            )
            reply = await api.patch(f"/api/v1/runs/{rng.choice(known)}", json=change)
            assert reply.status == 200, reply.body
        elif kind == "batch":
            batch = [run() for _ in range(rng.randint(1, 6))]
            fresh = [created["event_id"] for created in batch]
            batch.append(new_run(event_id=rng.choice(known), agent_name="dup-never-stored"))
            assert (await api.post("/api/v1/runs/batch", json=batch)).status == 200
            known.extend(fresh)
        elif kind == "upsert":
            items: list[dict[str, Any]] = []
            fresh = []
            for _ in range(rng.randint(1, 5)):
                if rng.random() < 0.5:
                    created = run()
                    fresh.append(created["event_id"])
                    update = {"job_type": job()} if rng.random() < 0.3 else None
                    items.append(
                        {"event_id": created["event_id"], "create": created, "update": update}
                    )
                else:
                    items.append({"event_id": rng.choice(known), "update": {"agent_name": agent()}})
            reply = await api.post("/api/v1/runs/batch?mode=upsert", json=items)
            assert reply.status == 200, reply.body
            known.extend(fresh)
        else:
            with pytest.raises(Rollback):
                await rolled_back()

    for _ in range(0, steps, 10):
        await asyncio.gather(*(one() for _ in range(10)))


async def test_metadata_equals_select_distinct_after_random_writes_and_restart(
    make_api, make_config, new_run
):
    """After each random concurrent mix, and after a restart, the answer is exactly what
    SELECT DISTINCT ... ORDER BY says on the file."""
    api = await make_api()
    for seed in range(3):
        await random_writes(api, new_run, seed, steps=60)
        assert (await api.get("/api/v1/metadata")).body == await truth(api)
    before = (await api.get("/api/v1/metadata")).body
    assert before["counts"]["agent_names"] > 10
    await api.client.close()
    again = await make_api()
    assert (await again.get("/api/v1/metadata")).body == before
    await random_writes(again, new_run, seed=9, steps=40)
    assert (await again.get("/api/v1/metadata")).body == await truth(again)


async def test_metadata_runs_no_query(api, new_run, monkeypatch):
    """/api/v1/metadata never touches the readers, even right after a write adds a value."""
    await api.post("/api/v1/runs/batch", json=[new_run(agent_name=f"a{i}") for i in range(5)])
    database = api.client.server.app[DATABASE]

    async def no_reads(fn: Any) -> Any:
        raise AssertionError("/api/v1/metadata ran a query")

    monkeypatch.setattr(database.reader, "run", no_reads)
    with every_statement(database, monkeypatch) as statements:
        assert (await api.get("/api/v1/metadata")).body["counts"]["agent_names"] == 5
    assert statements == []  # neither on the writer's connection nor on any reader's
    await api.create(new_run(agent_name="a-new", job_type="j-new"))
    with every_statement(database, monkeypatch) as statements:
        body = (await api.get("/api/v1/metadata")).body
    assert statements == []
    assert "a-new" in body["agent_names"]
    assert "j-new" in body["job_types"]


@pytest.mark.parametrize("via", ["create", "batch", "upsert", "patch"])
async def test_new_values_visible_right_after_the_write(api, new_run, via):
    """The answer to the write is enough: the next metadata read already has the value
    (and a renamed-away value is already gone), with the TTL at its default of 300 s."""
    existing = new_run(agent_name="before", job_type="jb")
    await api.create(existing)
    assert (await api.get("/api/v1/metadata")).body["agent_names"] == ["before"]
    fresh = new_run(agent_name="after", job_type="ja")
    if via == "create":
        await api.create(fresh)
    elif via == "batch":
        await api.post("/api/v1/runs/batch", json=[fresh])
    elif via == "upsert":
        await api.post(
            "/api/v1/runs/batch?mode=upsert",
            json=[{"event_id": fresh["event_id"], "create": fresh}],
        )
    else:
        reply = await api.patch(
            f"/api/v1/runs/{existing['event_id']}", json={"agent_name": "after", "job_type": "ja"}
        )
        assert reply.status == 200
    body = (await api.get("/api/v1/metadata")).body
    if via == "patch":
        assert (body["agent_names"], body["job_types"]) == (["after"], ["ja"])
    else:
        assert (body["agent_names"], body["job_types"]) == (["after", "before"], ["ja", "jb"])


async def test_failed_group_leaves_no_value(api, new_run):
    """A write the storage refuses whole (CHECK fails) adds no value."""
    await api.create(new_run(agent_name="kept", job_type="j"))
    database = api.client.server.app[DATABASE]

    def violates(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, start_time,"
            " created_at) VALUES ('x', 'r', 'ghost', 'ghost-job', 't', 't')"
        )
        conn.execute("UPDATE agent_runs SET items_failed = -1")  # CHECK fails

    with pytest.raises(Exception, match="constraints"):
        await database.writer.run(violates)
    body = (await api.get("/api/v1/metadata")).body
    assert (body["agent_names"], body["job_types"]) == (["kept"], ["j"])
