"""The real telemetry-server process, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from daemons import running_server

pytestmark = pytest.mark.integration


async def test_guide_lifecycle_over_real_http(tmp_path: Path) -> None:
    """The guide's start -> work -> complete -> associate-commit flow works on the real server."""
    event_id = str(uuid.uuid4())
    with running_server(tmp_path) as server:
        async with aiohttp.ClientSession(server.url) as http:
            created = await http.post(
                "/api/v1/runs",
                json={
                    "event_id": event_id,
                    "run_id": "my-first-run-001",
                    "agent_name": "my-agent",
                    "job_type": "data-processing",
                    "start_time": "2026-01-12T10:30:00+00:00",
                    "git_repo": "git@github.com:myorg/myrepo.git",
                    "items_discovered": 100,
                },
            )
            assert created.status == 201
            assert await created.json() == {
                "status": "created",
                "event_id": event_id,
                "run_id": "my-first-run-001",
            }
            again = await http.post(
                "/api/v1/runs",
                json={
                    "event_id": event_id,
                    "run_id": "x",
                    "agent_name": "my-agent",
                    "job_type": "data-processing",
                    "start_time": "2026-01-12T10:30:00Z",
                },
            )
            assert again.status == 201
            assert (await again.json())["status"] == "duplicate"
            progress = await http.patch(f"/api/v1/runs/{event_id}", json={"items_succeeded": 50})
            assert progress.status == 200
            done = await http.patch(
                f"/api/v1/runs/{event_id}",
                json={
                    "status": "success",
                    "end_time": "2026-01-12T10:35:00Z",
                    "duration_ms": 300000,
                },
            )
            assert await done.json() == {
                "event_id": event_id,
                "updated": True,
                "fields_updated": ["status", "end_time", "duration_ms"],
            }
            commit = await http.post(
                f"/api/v1/runs/{event_id}/associate-commit",
                json={"commit_hash": "abc1234567890", "commit_source": "llm"},
            )
            assert commit.status == 200
            run = await (await http.get(f"/api/v1/runs/{event_id}")).json()
            assert run["status"] == "success"
            assert run["items_succeeded"] == 50
            assert run["commit_url"] == "https://github.com/myorg/myrepo/commit/abc1234567890"
            listed = await (
                await http.get("/api/v1/runs", params={"agent_name": "my-agent"})
            ).json()
            assert [r["event_id"] for r in listed] == [event_id]
        assert server.stop(signal.SIGTERM) == 0
    assert '"server_stopped"' in server.log()
    with sqlite3.connect(tmp_path / "server.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT status FROM agent_runs").fetchall() == [("success",)]


def test_bad_configuration_exits_with_a_message_naming_the_variable(tmp_path: Path) -> None:
    """A bad TELEMETRY_* value stops the daemon at once, naming the variable."""
    result = subprocess.run(
        [sys.executable, "-m", "server", "--port", "1"],
        env={"TELEMETRY_DB_JOURNAL_MODE": "sideways", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"TELEMETRY_DB_JOURNAL_MODE" in result.stderr
