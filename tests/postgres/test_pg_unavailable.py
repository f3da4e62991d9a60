"""Database failures reach the HTTP layer as ``StorageUnavailable`` (503 with
Retry-After), never as a driver exception (a 500): a lock held too long, connections
cut under the pool."""

from __future__ import annotations

import asyncpg
import pytest

from server.contract.models import RunCreate
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.url import parse_url
from server.storage.connection import StorageUnavailable


def _run(event_id: str) -> RunCreate:
    return RunCreate.model_validate(
        {
            "event_id": event_id,
            "run_id": "r",
            "agent_name": "a",
            "job_type": "j",
            "start_time": "2026-03-01T11:00:00Z",
        }
    )


async def test_a_row_locked_past_the_command_timeout_is_busy(pg_url: str) -> None:
    db = await PostgresDatabase.open(
        PostgresSettings(url=parse_url(pg_url), pool_size=2, command_timeout_s=0.3)
    )
    holder = await asyncpg.connect(pg_url, timeout=10)
    try:
        assert await db.create(_run("locked"))
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM agent_runs WHERE event_id = 'locked' FOR UPDATE")
            with pytest.raises(StorageUnavailable, match="busy") as caught:
                await db.update("locked", {"status": "success"})
            assert caught.value.retry_after_s == 1
        # the lock released, the same write goes through
        assert await db.update("locked", {"status": "success"}) == "r"
    finally:
        await holder.close()
        await db.close()


async def test_connections_cut_under_the_pool_are_unavailable_then_recover(
    pgdb: PostgresDatabase, pg_migrated_url: str
) -> None:
    assert await pgdb.create(_run("before"))
    killer = await asyncpg.connect(pg_migrated_url, timeout=10)
    try:
        await killer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'telemetry-server'"
        )
    finally:
        await killer.close()
    outcomes = []
    for attempt in range(20):  # noqa: B007 (read after the loop)
        try:
            run = await pgdb.get("before")
        except StorageUnavailable as exc:
            outcomes.append(str(exc))
            continue
        assert run is not None
        break
    else:
        pytest.fail(f"the pool never recovered: {outcomes}")
    assert all(outcome == "database unavailable" for outcome in outcomes), outcomes
    assert attempt <= 2
