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
from migrate_helpers import fill, migrate_command, new_database, row, scalar, start_migrate

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
#: The progress marker's row (the bulk copy's ``…:indexes`` row beside it matches the prefix).
_MARKER_ROW = "key LIKE 'migrate:sqlite:%' AND key NOT LIKE '%:indexes'"
#: One snapshot: the marker and the rows it claims, read together so that a commit the
#: killed client had already sent cannot land between the two reads.
_STATE = (
    f"SELECT (SELECT value FROM server_meta WHERE {_MARKER_ROW}),"
    " (SELECT count(*) FROM agent_runs), (SELECT coalesce(max(id), 0) FROM agent_runs)"
)


async def _marker(url: str) -> int | None:
    """The last id the target's progress marker holds (None before the first batch)."""
    if await scalar(url, "SELECT to_regclass('server_meta')") is None:
        return None
    value = await scalar(url, f"SELECT value FROM server_meta WHERE {_MARKER_ROW}")
    return None if value is None else int(orjson.loads(bytes(value))["last_id"])


async def _backend_gone(url: str) -> None:
    """Waits (bounded) until the killed client's backend has ended: a COMMIT it had sent
    before the kill still completes on the server, so the state is final only then."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = await scalar(
            url,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'telemetry-migrate' AND datname = current_database()",
        )
        if left == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the killed migrate's backend is still there after 30 s")


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
        await _backend_gone(pg_url)
        value, count, max_id = await row(pg_url, _STATE)
        assert value is not None
        marked = int(orjson.loads(bytes(value))["last_id"])
        assert marked < ROWS
        # ids are 1..ROWS: whole batches, exactly up to the marker
        assert (count, max_id) == (marked, marked)
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
