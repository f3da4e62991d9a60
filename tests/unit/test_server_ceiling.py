"""bench/server_ceiling.py, the server's ceiling in bench/server_bench.py: a real process
that validates like the server, stores what it acknowledges durably, and refuses what the
server refuses (else the ratio quoted against it would compare unlike work)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from server.contract.answers import DUPLICATE_MESSAGE
from server.storage.schema import migrate
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 20.0


def _call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.timeout(60)
def test_the_ceiling_stores_what_it_acknowledges_and_refuses_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "ceiling.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    migrate(conn)
    conn.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "server_ceiling.py"),
            "--port",
            str(port),
            "--db",
            str(db),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "ceiling.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the ceiling exited: {(tmp_path / 'ceiling.log').read_text()}")
            try:
                if _call("GET", base + "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("the ceiling never answered /health")
        event_id = str(uuid.uuid4())
        run = {
            "event_id": event_id,
            "run_id": "r-1",
            "agent_name": "a",
            "job_type": "j",
            "status": "running",
            "start_time": "2026-12-03T10:00:00Z",
        }
        assert _call("POST", base + "/api/v1/runs", run) == (
            201,
            {"status": "created", "event_id": event_id, "run_id": "r-1"},
        )
        assert _call("POST", base + "/api/v1/runs", run) == (
            201,
            {"status": "duplicate", "event_id": event_id, "message": DUPLICATE_MESSAGE},
        )
        status, answer = _call(
            "PATCH", base + f"/api/v1/runs/{event_id}", {"status": "success", "duration_ms": 5}
        )
        assert (status, answer["updated"]) == (200, True)
        assert (
            _call("PATCH", base + f"/api/v1/runs/{uuid.uuid4()}", {"status": "success"})[0] == 404
        )
        assert _call("POST", base + "/api/v1/runs", {**run, "status": "bogus"})[0] == 422
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT status, duration_ms FROM agent_runs").fetchall()
    finally:
        conn.close()
    assert rows == [("success", 5)]
