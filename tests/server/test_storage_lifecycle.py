"""Storage seen through the app: migrations on start, restarts, lock contention."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.storage.database import Database, StorageSettings
from server.storage.schema import (
    EARLY_INDEXES,
    LATE_CREATED_INDEXES,
    LATE_INDEXES,
    LIST_INDEXES,
    MIGRATIONS,
    SCHEMA_VERSION,
    START_TIME_INDEX,
    SchemaTooNew,
)


def make_v1_database(path):
    """A database as the first schema version left it, with one run in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in MIGRATIONS[0].statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {MIGRATIONS[0].version}")
        conn.execute(
            "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, status, start_time,"
            " created_at, metrics_json, items_succeeded)"
            " VALUES ('old-run', 'r-old', 'legacy-agent', 'legacy-job', 'success',"
            " '2025-06-01T10:00:00.000000+00:00', '2025-06-01T10:00:01.000000+00:00',"
            " '{\"k\": 1}', 7)"
        )
    finally:
        conn.close()


def user_version(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


async def test_v1_database_upgrades_in_place_and_keeps_rows(make_api, make_config, new_run):
    """A schema-1 database is migrated on start; its rows are served with updated_at filled."""
    path = make_config().db_path
    make_v1_database(path)
    api = await make_api()
    old = await api.run("old-run")
    assert old["run_id"] == "r-old"
    assert old["status"] == "success"
    assert old["items_succeeded"] == 7
    assert old["metrics_json"] == {"k": 1}
    assert old["updated_at"] == old["created_at"] == "2025-06-01T10:00:01.000000+00:00"
    assert [run["event_id"] for run in await api.list(agent_name="legacy-agent")] == ["old-run"]
    assert user_version(path) == SCHEMA_VERSION

    run = new_run()
    await api.create(run)
    assert len(await api.list()) == 2
    reply = await api.patch("/api/v1/runs/old-run", json={"status": "failure"})
    assert reply.status == 200
    assert (await api.run("old-run"))["updated_at"] > old["updated_at"]


async def test_upgraded_database_has_the_filter_indexes(make_api, make_config):
    """After the upgrade every documented filter has its index."""
    path = make_config().db_path
    make_v1_database(path)
    await make_api()
    conn = sqlite3.connect(path)
    try:
        indexes = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'agent_runs'"
            )
        }
    finally:
        conn.close()
    assert {
        *LIST_INDEXES.values(),
        *LATE_INDEXES.values(),
        *LATE_CREATED_INDEXES.values(),
        *EARLY_INDEXES.values(),
        START_TIME_INDEX,
    } <= indexes
    # The indexes migrations 4 and 5 replaced are gone (they would only slow writes down).
    assert not {"idx_runs_agent_created", "idx_runs_job_created", "idx_runs_start_time"} & indexes


async def test_newer_schema_refuses_to_open(make_config):
    """A database written by a newer server is refused at start and left untouched."""
    config = make_config()
    conn = sqlite3.connect(config.db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        Database.open(StorageSettings(path=config.db_path))
    client = TestClient(TestServer(create_app(config)))
    with pytest.raises(SchemaTooNew):
        await client.start_server()
    await client.close()
    assert user_version(config.db_path) == SCHEMA_VERSION + 1
    conn = sqlite3.connect(config.db_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        conn.close()


async def test_fresh_database_is_created_with_parent_directories(make_api, make_config, tmp_path):
    """A db_path in a missing directory is created, at the current schema version."""
    path = tmp_path / "nested" / "dir" / "fresh.sqlite"
    api = await make_api(db_path=path)
    assert (await api.get("/health")).body["db_path"] == str(path)
    assert user_version(path) == SCHEMA_VERSION


async def test_runs_survive_a_restart(make_api, new_run):
    """Runs written before a clean shutdown are there after the next start."""
    api = await make_api(synchronous="FULL")
    run = new_run()
    await api.create(run)
    await api.client.close()
    again = await make_api(synchronous="FULL")
    assert (await again.run(run["event_id"]))["run_id"] == run["run_id"]
    duplicate = await again.post("/api/v1/runs", json=run)
    assert (duplicate.status, duplicate.body["status"]) == (201, "duplicate")


async def test_concurrent_writes_are_all_committed(api, new_run):
    """Many concurrent creates are all stored; the writer counts each operation."""
    runs = [new_run() for _ in range(60)]
    replies = await asyncio.gather(*(api.post("/api/v1/runs", json=run) for run in runs))
    assert all(reply.status == 201 for reply in replies)
    assert len(await api.list(limit=1000)) == 60
    performance = (await api.get("/metrics")).body["performance"]
    assert performance["write_operations"] >= 60
    assert 1 <= performance["write_transactions"] <= performance["write_operations"]
    assert performance["failed_write_transactions"] == 0


async def test_write_lock_held_elsewhere_gives_503_and_health_answers(
    make_api, make_config, new_run
):
    """While another process holds the write lock, writes get 503 + Retry-After, never 500,
    /health and reads keep answering, and writes succeed once the lock is released."""
    api = await make_api(busy_timeout_ms=100)
    stored = new_run()
    await api.create(stored)
    blocker = sqlite3.connect(make_config().db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        write, health = await asyncio.gather(
            api.post("/api/v1/runs", json=new_run()), api.get("/health")
        )
        assert write.status == 503
        assert write.body["error"] == "service_unavailable"
        assert int(write.headers["Retry-After"]) >= 1
        assert health.status == 200
        assert health.body["status"] == "ok"
        assert (await api.run(stored["event_id"]))["event_id"] == stored["event_id"]
        batch = await api.post("/api/v1/runs/batch", json=[new_run()])
        assert batch.status == 503
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await api.create(new_run())
