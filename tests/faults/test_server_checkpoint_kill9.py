"""kill -9 of the central server while its checkpoint thread copies the WAL and the WAL
restarts: every write it acknowledged is in the file afterwards (the WAL's bound is checked
in tests/server/test_wal_checkpoints.py, where the pass interval is scaled down)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from daemons import free_port
from procs import Reaper, call, create_body, new_event_id, start_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROUNDS = 3
CLIENTS = 12
RESTART_PAGES = 64
#: Acknowledged lifecycles per round before the kill (a few thousand WAL frames).
ACKS_BEFORE_KILL = 400
ROUND_BOUND_S = 60.0
SERVER_ENV = {
    "TELEMETRY_DB_SYNCHRONOUS": "FULL",
    "TELEMETRY_DB_WAL_RESTART_PAGES": str(RESTART_PAGES),
    "TELEMETRY_LOG_LEVEL": "DEBUG",  # the checkpoint thread's passes are DEBUG lines
}


async def _load_until_killed(
    url: str, kill: asyncio.Event, created: set[str], finished: set[str]
) -> None:
    """CLIENTS clients create then complete runs until ``kill``, recording what was acked."""
    deadline = time.monotonic() + ROUND_BOUND_S

    async def client(http: aiohttp.ClientSession) -> None:
        while not kill.is_set() and time.monotonic() < deadline:
            event_id = new_event_id()
            body = create_body(event_id, metrics_json={"blob": "m" * 2000})
            answer = await call(http, "POST", f"{url}/api/v1/runs", body)
            if answer.status != 201:
                return  # the server is gone
            created.add(event_id)
            patch = {"status": "success", "items_succeeded": 7, "output_summary": "o" * 500}
            answer = await call(http, "PATCH", f"{url}/api/v1/runs/{event_id}", patch)
            if answer.status != 200:
                return
            finished.add(event_id)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))


def _rows(db: Path) -> dict[str, tuple[str, int | None]]:
    """(status, items_succeeded) of every stored run; opening the file replays its WAL."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return {
            row[0]: (row[1], row[2])
            for row in conn.execute("SELECT event_id, status, items_succeeded FROM agent_runs")
        }
    finally:
        conn.close()


@pytest.mark.timeout(240)
async def test_kill_9_during_background_checkpoints_loses_nothing(
    tmp_path: Path, reaper: Reaper
) -> None:
    """Each round: lifecycles at concurrency 12 until ACKS_BEFORE_KILL were acknowledged and
    the checkpoint thread has made a pass, then SIGKILL with requests in flight. After every round the file (recovered from its WAL by
    SQLite) holds every acknowledged create, every acknowledged PATCH applied; the server's
    log shows its checkpoint thread copying the WAL."""
    db = tmp_path / "server.sqlite"
    created: set[str] = set()
    finished: set[str] = set()
    for round_no in range(ROUNDS):
        port = free_port()
        server = start_server(reaper, tmp_path, port=port, db=db, env=SERVER_ENV)
        kill = asyncio.Event()
        round_created: set[str] = set()
        round_finished: set[str] = set()
        load = asyncio.create_task(
            _load_until_killed(server.url, kill, round_created, round_finished)
        )
        deadline = time.monotonic() + ROUND_BOUND_S
        while time.monotonic() < deadline and not load.done():
            # Enough acknowledged, and the checkpoint thread (a pass a second) at work.
            if len(round_finished) >= ACKS_BEFORE_KILL and '"db_checkpoint"' in server.log():
                break
            await asyncio.sleep(0.005)
        server.stop(signal.SIGKILL)  # requests in flight, some just acknowledged
        kill.set()
        await load
        created |= round_created
        finished |= round_finished
        log = server.log()
        assert '"db_checkpoint"' in log, f"round {round_no}: the checkpoint thread never ran"
        rows = _rows(db)
        missing = created - rows.keys()
        assert not missing, f"round {round_no}: {len(missing)} acknowledged creates lost"
        unfinished = [e for e in finished if rows[e] != ("success", 7)]
        assert not unfinished, f"round {round_no}: {len(unfinished)} acknowledged PATCHes lost"
    assert len(finished) >= ROUNDS * ACKS_BEFORE_KILL
