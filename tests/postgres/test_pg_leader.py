"""Background work on one elected replica: two real ``telemetry-server`` processes on one
PostgreSQL database, one leads (reaps), ``kill -9`` of it, the other takes over."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import daemons
import pg_cluster
import pytest
from test_pg_server_process import _CLEAN_ENV

#: From the leader's death to the other replica's first pass as leader: PostgreSQL ends
#: the dead process's session (and its lock) when its socket closes; the survivor asks
#: before every reaper pass (every 0.2 s here).
TAKEOVER_BOUND_S = 15.0


def _call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def _leaders(servers: list[daemons.Daemon]) -> list[daemons.Daemon]:
    return [s for s in servers if "leadership_taken" in s.log()]


def _wait(predicate: Any, bound_s: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < bound_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {bound_s} s")


def _reaped(server: daemons.Daemon, event_id: str) -> bool:
    return _call(f"{server.url}/api/v1/runs/{event_id}")[1]["status"] == "timeout"


def _stale_run(server: daemons.Daemon, event_id: str) -> None:
    run = {
        "event_id": event_id,
        "run_id": f"r-{event_id}",
        "agent_name": "agent",
        "job_type": "job",
        "start_time": "2026-03-01T11:00:00Z",
        "heartbeat_timeout_s": 1,
    }
    assert _call(f"{server.url}/api/v1/runs", "POST", run)[0] == 201


@pytest.mark.slow
def test_one_replica_reaps_and_another_takes_over_when_it_is_killed(
    tmp_path: Path, postgres_cluster: pg_cluster.Cluster
) -> None:
    name = postgres_cluster.new_database("leader")
    env = {
        **_CLEAN_ENV,
        "TELEMETRY_DATABASE_URL": postgres_cluster.url(name),
        "TELEMETRY_REAPER_INTERVAL_S": "0.2",
        "TELEMETRY_LOG_LEVEL": "INFO",
    }
    servers: list[daemons.Daemon] = []
    try:
        for n in range(2):
            port = daemons.free_port()
            workdir = tmp_path / f"replica{n}"
            workdir.mkdir()
            servers.append(
                daemons.start("server", ["--port", str(port)], port=port, workdir=workdir, env=env)
            )
        _wait(lambda: len(_leaders(servers)) == 1, 10, "a leader")
        time.sleep(1.0)  # both have asked several times by now: still exactly one
        (leader,) = _leaders(servers)
        (follower,) = [s for s in servers if s is not leader]
        _stale_run(follower, "before")  # written on the follower, reaped by the leader
        _wait(lambda: _reaped(follower, "before"), 10, "the leader's reaping")
        assert "runs_reaped" in leader.log()
        assert "runs_reaped" not in follower.log()

        leader.stop(signal.SIGKILL)
        _stale_run(follower, "after")
        took = _wait(lambda: "leadership_taken" in follower.log(), TAKEOVER_BOUND_S, "takeover")
        _wait(lambda: _reaped(follower, "after"), 10, "the new leader's reaping")
        print(f"takeover after {took:.2f} s")  # for the report (-s)
    finally:
        for server in servers:
            server.stop()
        postgres_cluster.drop_database(name)
