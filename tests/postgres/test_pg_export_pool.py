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
