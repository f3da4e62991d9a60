"""Exports streamed to clients that stop reading hold their pooled connection (and
snapshot) for as long as the client stalls: they must never take the whole pool, or
every write of the replica waits with them (no answer at all, not even a 503)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import pytest

from server.contract.models import RunCreate, RunQuery
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.errors import ACQUIRE_TIMEOUT_S
from server.postgres.url import parse_url
from server.storage.connection import StorageUnavailable

POOL = 4


async def test_stalled_exports_leave_connections_for_writes(pg_migrated_url: str) -> None:
    settings = replace(PostgresSettings(url=parse_url(pg_migrated_url)), pool_size=POOL)
    database = await PostgresDatabase.open(settings)
    exports: list[Any] = []
    refused: list[float] = []
    try:
        for _ in range(POOL):  # as many exports as the pool has connections, none read
            try:
                exports.append(await database.export(RunQuery(), "ndjson", escape_formulas=False))
            except StorageUnavailable as exc:
                refused.append(exc.retry_after_s)
        assert exports, "an export is served while the pool has room"
        assert refused, "exports beyond their share of the pool are refused (503)"
        assert min(refused) > 0
        event_id = str(uuid.uuid4())
        run = RunCreate.model_validate(
            {
                "event_id": event_id,
                "run_id": "r",
                "agent_name": "a",
                "job_type": "j",
                "start_time": "2026-01-12T10:30:00Z",
            }
        )
        try:
            await asyncio.wait_for(database.create(run), 10)
        except TimeoutError:
            pytest.fail("a write waited behind exports that held every pooled connection")
        assert (await database.get(event_id)) is not None
        await exports.pop().close()  # a slot freed is taken again
        exports.append(await database.export(RunQuery(), "csv", escape_formulas=False))
        assert await exports[-1].next_chunk()  # the CSV header
    finally:
        for export in exports:
            await export.close()
        await database.close()


async def test_a_write_behind_a_pool_held_by_slow_queries_is_a_503_not_a_hang(
    pg_migrated_url: str,
) -> None:
    """Every pooled connection busy (slow stats, pages): a write waits a bounded time for
    one, then is answered 503 (busy, retry) instead of waiting for as long as they run."""
    settings = replace(PostgresSettings(url=parse_url(pg_migrated_url)), pool_size=2)
    database = await PostgresDatabase.open(settings)
    held = [await database.pool.acquire() for _ in range(2)]
    run = RunCreate.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "run_id": "r",
            "agent_name": "a",
            "job_type": "j",
            "start_time": "2026-01-12T10:30:00Z",
        }
    )
    try:
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(database.create(run), ACQUIRE_TIMEOUT_S + 20)
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(database.get("x"), ACQUIRE_TIMEOUT_S + 20)
    finally:
        for conn in held:
            await database.pool.release(conn)
        await database.close()
