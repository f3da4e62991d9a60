"""A real spoold whose runs index is too large to check before serving
(SPOOLD_STARTUP_CHECK_MAX_MB=0 here): the check after start-up finds the damage, spoold
exits with status 70 (as after a kill -9: nothing acknowledged is lost), and the next
start checks the index before serving, sets it aside and rebuilds it from the spool."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest
from daemons import free_port
from procs import Reaper, RunLedger, call, create_body, health, log_events, start_spoold

from spoold.state.verify import DAMAGE_EXIT_CODE, REQUEST_SUFFIX

pytestmark = [pytest.mark.slow, pytest.mark.integration]

INDEX = "runs-index.sqlite"
DEFER_ALL = {"SPOOLD_STARTUP_CHECK_MAX_MB": "0", "SPOOLD_SHUTDOWN_DEADLINE_S": "0.3"}
RUNS = 6


def _index_entries_damaged(path: Path) -> None:
    """Opening and reading still work; ``PRAGMA integrity_check`` finds the damage."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql ="
            " 'CREATE INDEX runs_prunable ON runs(touched_at, pending)'"
            " WHERE name = 'runs_prunable'"
        )


def _run_to_exit(spool_dir: Path, upstream: str, log_path: Path) -> int:
    """Run spoold until it exits by itself (bounded: 60 s, then SIGKILL by PID)."""
    argv = [sys.executable, "-m", "spoold", "serve", "--port", str(free_port())]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [*argv, "--upstream", upstream, "--spool-dir", str(spool_dir)],
            cwd=spool_dir.parent,
            env={**os.environ, **DEFER_ALL},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        return process.wait(60)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


async def _queue(url: str, runs: list[RunLedger]) -> None:
    async with aiohttp.ClientSession() as http:
        for run in runs:
            answer = await call(http, "POST", f"{url}/api/v1/runs", create_body(run.event_id))
            assert answer.status == 201, answer
            run.create_acked = True


async def test_damage_found_after_start_makes_the_next_start_check_first(
    tmp_path: Path, reaper: Reaper
) -> None:
    spool_dir = tmp_path / "spool"
    upstream = f"http://127.0.0.1:{free_port()}"  # down: everything stays queued
    runs = [RunLedger(f"run-{k}") for k in range(RUNS)]
    spoold = start_spoold(
        reaper, tmp_path, port=free_port(), upstream=upstream, spool_dir=spool_dir, env=DEFER_ALL
    )
    await _queue(spoold.url, runs)
    assert spoold.stop() == 0
    _index_entries_damaged(spool_dir / INDEX)

    log_path = tmp_path / "spoold-damaged.log"
    code = await asyncio.to_thread(_run_to_exit, spool_dir, upstream, log_path)
    log = log_path.read_text(errors="replace")
    assert code == DAMAGE_EXIT_CODE, log[-3000:]
    assert '"event":"local_file_damaged"' in log.replace(" ", "")
    assert (spool_dir / f"{INDEX}{REQUEST_SUFFIX}").exists()

    started = time.monotonic()
    spoold = start_spoold(
        reaper, tmp_path, port=free_port(), upstream=upstream, spool_dir=spool_dir, env=DEFER_ALL
    )
    assert time.monotonic() - started < 60
    body = health(spoold)
    assert body["storage"]["index_rebuilds"] == 1, body
    assert body["counters"]["queued"] == RUNS
    assert not (spool_dir / f"{INDEX}{REQUEST_SUFFIX}").exists()
    async with aiohttp.ClientSession() as http:  # the rebuilt index knows the queued runs
        again = await call(http, "POST", f"{spoold.url}/api/v1/runs", create_body("run-1"))
        assert (again.status, again.body["status"]) == (201, "duplicate"), again
    await asyncio.sleep(1.0)  # its own check after start-up passes: it keeps serving
    assert spoold.process.poll() is None
    assert spoold.stop() == 0
    events = [e.get("event") for e in log_events(spoold)]
    assert events.count("runs_index_corrupt") == 1
    assert "local_file_damaged" not in events
