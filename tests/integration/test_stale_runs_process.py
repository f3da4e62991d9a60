"""Stale runs with the real telemetry-server process: an agent killed with SIGKILL mid-run,
a server killed while reaping, a bad allowance setting at start."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemons import free_port, running_server

from server.contract.models import RunCreate
from server.storage.runs import _INSERT_SQL, insert_params
from server.storage.schema import migrate

pytestmark = pytest.mark.integration

#: The agent: creates its run with a 2 s allowance, then says it is alive every 0.3 s
#: (with progress), writing straight to the server; it prints a line once it has begun.
AGENT = textwrap.dedent(
    """
    import json, sys, time, urllib.request
    url, event_id = sys.argv[1], sys.argv[2]
    def call(method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    call("POST", "/api/v1/runs", {"event_id": event_id, "run_id": "r", "agent_name": "etl",
         "job_type": "nightly", "start_time": "2026-01-12T10:30:00Z",
         "heartbeat_timeout_s": 2})
    print("started", flush=True)
    for beat in range(10_000):
        call("POST", f"/api/v1/runs/{event_id}/heartbeat", {"progress": {"beat": beat}})
        time.sleep(0.3)
    """
)
ALLOWANCE_S = 2.0


def get_run(url: str, event_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/api/v1/runs/{event_id}", timeout=5) as response:
        return dict(json.loads(response.read()))


@pytest.mark.slow
def test_an_agent_killed_mid_run_is_timed_out_after_its_allowance(tmp_path: Path) -> None:
    """While the agent lives its heartbeats keep the run `running` (for longer than its
    allowance); once it is SIGKILLed the run becomes `timeout` after the allowance (and
    not before), ended at the last time it was heard from."""
    event_id = str(uuid.uuid4())
    env = {"TELEMETRY_REAPER_INTERVAL_S": "0.2", "TELEMETRY_LOG_LEVEL": "WARNING"}
    with running_server(tmp_path, env=env) as server:
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, server.url, event_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert agent.stdout is not None
            assert agent.stdout.readline().strip() == b"started"
            time.sleep(ALLOWANCE_S * 2)  # alive for twice its allowance: never reaped
            alive = get_run(server.url, event_id)
            assert alive["status"] == "running"
            assert alive["metrics_json"]["beat"] > 3
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait(5)
            killed_at = time.monotonic()
        finally:
            if agent.poll() is None:
                os.kill(agent.pid, signal.SIGKILL)
                agent.wait(5)
        last = get_run(server.url, event_id)
        deadline = killed_at + ALLOWANCE_S + 10.0
        while time.monotonic() < deadline:
            run = get_run(server.url, event_id)
            if run["status"] != "running":
                break
            time.sleep(0.05)
        reaped_after = time.monotonic() - killed_at
    assert run["status"] == "timeout", run
    assert reaped_after >= ALLOWANCE_S - 0.35  # the last beat was at most 0.3 s before the kill
    assert run["end_time"] == run["last_seen_at"] == last["last_seen_at"]
    assert run["error_summary"].startswith("no update for ")
    assert run["metrics_json"] == last["metrics_json"]  # the progress it had reported stays
    assert "reaped_at" in run["context_json"]


def overdue_rows(count: int) -> list[tuple[Any, ...]]:
    seen = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="microseconds")
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    rows = []
    for i in range(count):
        run = RunCreate.model_validate(
            {
                "event_id": f"e{i:06d}",
                "run_id": "r",
                "agent_name": f"agent-{i % 40}",
                "job_type": "j",
                "start_time": "2026-01-12T10:30:00Z",
                "heartbeat_timeout_s": 60,
                "context_json": {"i": i},
            }
        )
        rows.append(insert_params(run, now, seen))
    return rows


def assert_whole(path: Path) -> tuple[int, int]:
    """Every run is either untouched or reaped whole; (reaped, untouched)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT status, reaped_at, end_time, last_seen_at, error_summary, context_json,"
            " duration_ms FROM agent_runs"
        ).fetchall()
    finally:
        conn.close()
    reaped = untouched = 0
    for status, reaped_at, end_time, last_seen, summary, context, duration in rows:
        if status == "timeout":
            assert reaped_at is not None
            assert end_time == last_seen
            assert summary.startswith("no update for ")
            assert json.loads(context)["reaped_at"] == reaped_at
            assert duration > 0
            reaped += 1
        else:
            assert (status, reaped_at, end_time, summary, duration) == (
                "running",
                None,
                None,
                None,
                0,
            )
            assert "reaped_at" not in json.loads(context)
            untouched += 1
    return reaped, untouched


@pytest.mark.slow
def test_a_server_killed_while_reaping_leaves_nothing_half_reaped(tmp_path: Path) -> None:
    """SIGKILL while the reaper works through thousands of overdue runs: each run is
    reaped whole or not at all, and the restarted server finishes the job."""
    path = tmp_path / "server.sqlite"
    count = 12_000
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    migrate(conn)
    conn.execute("BEGIN")
    conn.executemany(_INSERT_SQL, overdue_rows(count))
    conn.execute("COMMIT")
    conn.close()
    env = {"TELEMETRY_REAPER_INTERVAL_S": "0.05", "TELEMETRY_LOG_LEVEL": "WARNING"}
    port = free_port()
    with running_server(tmp_path, db_path=path, port=port, env=env) as server:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                done = reader.execute(
                    "SELECT count(*) FROM agent_runs WHERE reaped_at IS NOT NULL"
                ).fetchone()[0]
            finally:
                reader.close()
            if done:
                break
            time.sleep(0.005)
        server.stop(signal.SIGKILL)
    reaped, untouched = assert_whole(path)
    assert reaped + untouched == count
    with running_server(tmp_path, db_path=path, port=port, env=env) as server:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and assert_whole(path)[1]:
            time.sleep(0.1)
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
            metrics = json.loads(response.read())
    assert assert_whole(path) == (count, 0)
    assert metrics["stale"]["reaped_runs"] == count


def test_a_bad_job_allowance_stops_the_server_at_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server", "--port", str(free_port()), "--db", str(tmp_path / "x")],
        env={**os.environ, "TELEMETRY_STALE_AFTER_BY_JOB": "nightly-etl=2h"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    message = done.stderr.decode()
    assert "TELEMETRY_STALE_AFTER_BY_JOB" in message
    assert "'nightly-etl=2h' is not job=seconds" in message
    assert not (tmp_path / "x").exists()
