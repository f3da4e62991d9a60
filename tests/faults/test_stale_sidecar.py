"""Stale runs through a real sidecar: real processes, kill -9, outages.

* spoold killed -9 right after answering heartbeats 204 loses none of them (the
  upstream is a recording stand-in speaking the stale-runs contract, so this runs
  whatever the server in this tree knows).
* End to end (needs the server side of the contract: skipped until it is in this
  tree): a real agent process heartbeating through a real spoold to a real server;
  killed -9, its run becomes ``timeout`` after its allowance; with the server down
  for longer than the allowance while the agent keeps heartbeating, the run is NOT
  reaped, and it lives on once the heartbeats arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from daemons import free_port
from procs import (
    FlakyProxy,
    Reaper,
    create_body,
    get_json,
    health,
    new_event_id,
    post_json,
    start_server,
    start_spoold,
    wait_drained,
    wait_until,
)

from server.contract.models import UpsertItem

_SIDECAR_TESTS = str(Path(__file__).resolve().parent.parent / "sidecar")
if _SIDECAR_TESTS not in sys.path:
    sys.path.insert(0, _SIDECAR_TESTS)

from recording_upstream import RecordingUpstream  # noqa: E402

pytestmark = pytest.mark.slow

SERVER_HAS_STALE_RUNS = "heartbeat" in UpsertItem.model_fields
needs_server_side = pytest.mark.skipif(
    not SERVER_HAS_STALE_RUNS,
    reason="the server side of the stale-runs contract (h/stale-server) is not in this tree yet",
)


@contextlib.contextmanager
def recording_upstream(port: int) -> Iterator[RecordingUpstream]:
    """A RecordingUpstream served on 127.0.0.1:port from a thread of its own."""
    upstream = RecordingUpstream(url=f"http://127.0.0.1:{port}")
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(upstream.app())
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="recording-upstream", daemon=True)
    thread.start()
    assert ready.wait(10), "the recording upstream did not start"
    try:
        yield upstream
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def heartbeat(spoold_url: str, event_id: str, progress: dict[str, Any] | None = None) -> int | None:
    body = {} if progress is None else {"progress": progress}
    status, _ = post_json(f"{spoold_url}/api/v1/runs/{event_id}/heartbeat", body)
    return status


def test_kill_9_right_after_heartbeats_were_answered_loses_none(
    reaper: Reaper, tmp_path: Path
) -> None:
    upstream_port = free_port()  # nothing listens yet: the server is "down"
    spool_dir = tmp_path / "spool"
    spoold = start_spoold(
        reaper,
        tmp_path,
        port=free_port(),
        upstream=f"http://127.0.0.1:{upstream_port}",
        spool_dir=spool_dir,
    )
    event_id = new_event_id()
    status, _ = post_json(f"{spoold.url}/api/v1/runs", create_body(event_id))
    assert status == 201
    for n in range(40):
        assert heartbeat(spoold.url, event_id, {"n": n, "stage": {"at": n}}) == 204
    spoold.stop(signal.SIGKILL)
    sidecar_id = (spool_dir / "sidecar-id").read_text().strip()

    with recording_upstream(upstream_port) as upstream:
        spoold = start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=upstream.url,
            spool_dir=spool_dir,
        )
        drained = wait_drained(spoold)
        items = upstream.items(event_id)
        assert items[0]["create"]["event_id"] == event_id
        patches = [item["metrics_patch"] for item in items if "metrics_patch" in item]
        assert patches[-1] == {"n": 39, "stage": {"at": 39}}
        assert drained["counters"]["accepted"] == 41
        assert drained["counters"]["forwarded"] == 41
        assert drained["spool"]["dead_letters"] == 0
        assert {b.headers["X-Spoold-Id"] for b in upstream.batches} == {sidecar_id}
    spoold.stop()


# ---- end to end, with the real server ---------------------------------------------------

ALLOWANCE_S = 3
#: The agent: creates its run through spoold, then heartbeats until killed (bounded).
AGENT = r"""
import json, sys, time, urllib.request
url, event_id, allowance, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def post(path, body):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except Exception as exc:
        return repr(exc)
run = {"event_id": event_id, "run_id": "r-" + event_id[:8], "agent_name": "stale-agent",
       "job_type": "stale-job", "start_time": "2026-01-12T10:30:00Z",
       "heartbeat_timeout_s": allowance}
print("create", post("/api/v1/runs", run), flush=True)
for n in range(2000):
    print("beat", n, post("/api/v1/runs/%s/heartbeat" % event_id, {"progress": {"beat": n}}), flush=True)
    time.sleep(every)
"""

SERVER_STALE_ENV = {
    "TELEMETRY_STALE_AFTER_S": "21600",
    "TELEMETRY_SIDECAR_PRESENCE_S": "5",
    "TELEMETRY_REAPER_INTERVAL_S": "0.5",
}


@contextlib.contextmanager
def agent(
    spoold_url: str, event_id: str, log: Path, *, every_s: float = 0.25
) -> Iterator[subprocess.Popen[bytes]]:
    """The agent process (a heartbeat every ``every_s``), stopped by PID whatever happens."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", AGENT, spoold_url, event_id, str(ALLOWANCE_S), str(every_s)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def server_run(server_url: str, event_id: str) -> dict[str, Any] | None:
    status, body = get_json(f"{server_url}/api/v1/runs/{event_id}")
    return body if status == 200 and isinstance(body, dict) else None


def _unix(instant: str) -> float:
    return datetime.fromisoformat(instant).timestamp()


@needs_server_side
def test_an_agent_killed_mid_run_is_reaped_after_its_allowance(
    reaper: Reaper, tmp_path: Path
) -> None:
    server = start_server(
        reaper, tmp_path, port=free_port(), db=tmp_path / "t.sqlite", env=SERVER_STALE_ENV
    )
    spoold = start_spoold(
        reaper,
        tmp_path,
        port=free_port(),
        upstream=server.url,
        spool_dir=tmp_path / "spool",
        env={"SPOOLD_PRESENCE_INTERVAL_S": "0.5"},
    )
    event_id = new_event_id()
    with agent(spoold.url, event_id, tmp_path / "agent.log") as process:
        wait_until(lambda: server_run(server.url, event_id), timeout_s=20, what="the run")
        time.sleep(2 * ALLOWANCE_S)  # alive and heartbeating: never reaped
        run = server_run(server.url, event_id)
        assert run is not None
        assert run["status"] == "running", run
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed_at = time.time()
    reaped = wait_until(
        lambda: (r := server_run(server.url, event_id)) and r["status"] == "timeout" and r,
        timeout_s=ALLOWANCE_S + 30,
        what="the run to be reaped",
    )
    assert reaped["end_time"] == reaped["last_seen_at"]
    assert _unix(reaped["last_seen_at"]) <= killed_at + 0.5
    assert time.time() - _unix(reaped["last_seen_at"]) >= ALLOWANCE_S
    assert str(reaped["error_summary"]).startswith("no update for")
    assert reaped["metrics_json"]["beat"] >= 1
    assert health(spoold)["spool"]["dead_letters"] == 0


@needs_server_side
def test_a_server_outage_longer_than_the_allowance_is_not_staleness(
    reaper: Reaper, tmp_path: Path
) -> None:
    port, db = free_port(), tmp_path / "t.sqlite"
    server = start_server(reaper, tmp_path, port=port, db=db, env=SERVER_STALE_ENV)
    spoold = start_spoold(
        reaper,
        tmp_path,
        port=free_port(),
        upstream=server.url,
        spool_dir=tmp_path / "spool",
        env={"SPOOLD_PRESENCE_INTERVAL_S": "0.5"},
    )
    event_id = new_event_id()
    with agent(spoold.url, event_id, tmp_path / "agent.log") as process:
        wait_until(lambda: server_run(server.url, event_id), timeout_s=20, what="the run")
        time.sleep(1)
        server.stop(signal.SIGKILL)
        time.sleep(3 * ALLOWANCE_S)  # the agent keeps heartbeating into spoold's spool
        assert process.poll() is None
        assert health(spoold)["spool"]["depth"] > 0
        back_at = time.time()
        server = start_server(reaper, tmp_path, port=port, db=db, env=SERVER_STALE_ENV)
        wait_drained(spoold)
        run = server_run(server.url, event_id)
        assert run is not None
        assert run["status"] == "running", run
        assert _unix(run["last_seen_at"]) >= back_at - 1
        time.sleep(2 * ALLOWANCE_S)  # it lives on while the agent heartbeats
        run = server_run(server.url, event_id)
        assert run is not None
        assert run["status"] == "running", run
        assert _unix(run["last_seen_at"]) >= time.time() - ALLOWANCE_S
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    reaped = wait_until(
        lambda: (r := server_run(server.url, event_id)) and r["status"] == "timeout" and r,
        timeout_s=ALLOWANCE_S + 30,
        what="the run to be reaped once its agent is gone",
    )
    assert reaped["end_time"] == reaped["last_seen_at"]


@needs_server_side
def test_a_partition_shorter_than_the_presence_window_is_not_staleness(
    reaper: Reaper, tmp_path: Path
) -> None:
    """The agent heartbeats less often than spoold's presence batches, so the server's last
    word from the sidecar before the partition is "my spool is empty"; the partition lasts
    longer than the run's allowance but less than TELEMETRY_SIDECAR_PRESENCE_S. The
    heartbeats stuck in the spool meanwhile are the agent's: the run must not be reaped."""
    env = {key: value for key, value in SERVER_STALE_ENV.items() if "PRESENCE" not in key}
    server = start_server(reaper, tmp_path, port=free_port(), db=tmp_path / "t.sqlite", env=env)
    with FlakyProxy(
        server.port,
        seed=11,
        weights={"http_503": 1.0},
        stall_s=0,
        faulty_paths=("/api/v1/runs/batch",),
    ) as proxy:
        proxy.set_faulty(False)
        spoold = start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=proxy.url,
            spool_dir=tmp_path / "spool",
            env={"SPOOLD_PRESENCE_INTERVAL_S": "0.3"},
        )
        event_id = new_event_id()
        with agent(spoold.url, event_id, tmp_path / "agent.log", every_s=1.0) as process:
            wait_until(lambda: server_run(server.url, event_id), timeout_s=20, what="the run")
            time.sleep(1.5)
            proxy.set_faulty(True)  # batches (and presence) refused: a partition
            deadline = time.monotonic() + 3 * ALLOWANCE_S
            while time.monotonic() < deadline:  # bounded by the deadline
                run = server_run(server.url, event_id)
                assert run is not None
                assert run["status"] == "running", run
                time.sleep(0.25)
            proxy.set_faulty(False)
            wait_drained(spoold)
            run = server_run(server.url, event_id)
            assert run is not None
            assert run["status"] == "running", run
            assert process.poll() is None
