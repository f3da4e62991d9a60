"""``kill -9`` of a real ``python -m server migrate`` at random moments of its copy, then
the same command again: it goes on after the last whole batch and verifies; no run is
lost or doubled (the marker commits with its batch, so the target holds exactly the
runs up to it), and the list indexes dropped for the bulk copy are all there at the end."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from pathlib import Path

import orjson
import pytest
from migrate_helpers import fill, migrate_command, new_database, scalar, start_migrate

from server.postgres.bulk_indexes import BULK_ROWS
from server.postgres.schema import MIGRATIONS

ROWS = 30_000
#: Every non-unique index the migrations make on agent_runs.
_LIST_INDEXES = {
    match.group(1)
    for migration in MIGRATIONS
    for statement in migration.statements
    if (match := re.match(r"CREATE INDEX (\w+) ON agent_runs", statement))
}
BATCH = 300


async def _marker(url: str) -> int | None:
    """The last id the target's progress marker holds (None before the first batch)."""
    if await scalar(url, "SELECT to_regclass('server_meta')") is None:
        return None
    value = await scalar(url, "SELECT value FROM server_meta WHERE key LIKE 'migrate:sqlite:%'")
    return None if value is None else int(orjson.loads(bytes(value))["last_id"])


@pytest.mark.slow
async def test_kill9_mid_copy_then_again(tmp_path: Path, pg_url: str) -> None:
    """Three kills mid-copy (each after a random number of batches), then a run to the
    end: verified, every run once, and at each kill exactly the marked runs there."""
    source = tmp_path / "fleet.sqlite"
    await new_database(source)
    fill(source, ROWS, agents=300)
    rng = random.Random(13)
    kills = 0
    for _ in range(3):
        before = await _marker(pg_url) or 0
        wanted = before + BATCH * rng.randrange(2, 12)
        process = start_migrate(source, pg_url, "--batch-rows", str(BATCH))
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                if (await _marker(pg_url) or 0) >= wanted:
                    break
                await asyncio.sleep(0.01)
            assert process.poll() is None, "migrate ended before the kill"
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        marked = await _marker(pg_url)
        assert marked is not None
        assert marked < ROWS
        # ids are 1..ROWS: whole batches, exactly up to the marker
        assert await scalar(pg_url, "SELECT count(*) FROM agent_runs") == marked
        assert await scalar(pg_url, "SELECT coalesce(max(id), 0) FROM agent_runs") == marked
    assert kills == 3
    result = migrate_command(source, pg_url, "--batch-rows", str(BATCH))
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["verified"] is True
    assert summary["target_runs"] == ROWS
    assert await scalar(pg_url, "SELECT count(DISTINCT event_id) FROM agent_runs") == ROWS
    assert await scalar(pg_url, "SELECT count(DISTINCT id) FROM agent_runs") == ROWS
    # The bulk copy dropped the list indexes; the run that finished made them all again.
    assert ROWS >= BULK_ROWS
    made = await scalar(
        pg_url,
        "SELECT array_agg(indexname::text) FROM pg_indexes"
        " WHERE tablename = 'agent_runs' AND schemaname = current_schema()",
    )
    assert set(made) >= _LIST_INDEXES
    assert await scalar(pg_url, "SELECT count(*) FROM server_meta WHERE key LIKE '%:indexes'") == 0
