"""``telemetry-server`` as a real process on PostgreSQL: one setting switches the
backend; a wrong one stops start-up with one line naming it (never a traceback, never
the password); the SQLite-only commands point elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import daemons
import pg_cluster
import pytest

# Every TELEMETRY_* and DATABASE_URL of the environment running the tests is left out:
# each test says exactly which settings its server gets.
_CLEAN_ENV = {
    key: value
    for key, value in os.environ.items()
    if not key.startswith("TELEMETRY_") and key != "DATABASE_URL"
}


def _env(**settings: str) -> dict[str, str]:
    return {**_CLEAN_ENV, "TELEMETRY_LOG_LEVEL": "INFO", **settings}


def _request(url: str, method: str = "GET", body: Any = None) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.fixture
def database_url(postgres_cluster: pg_cluster.Cluster) -> Iterator[str]:
    """A fresh database of its own (a real server process migrates it)."""
    name = postgres_cluster.new_database("proc")
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.drop_database(name)


def _start(tmp_path: Path, env: dict[str, str]) -> daemons.Daemon:
    port = daemons.free_port()
    return daemons.start(
        "server",
        ["--port", str(port), "--db", str(tmp_path / "unused.sqlite")],
        port=port,
        workdir=tmp_path,
        env=env,
    )


def test_the_server_runs_on_postgresql_from_one_setting(
    tmp_path: Path, database_url: str, postgres_cluster: pg_cluster.Cluster
) -> None:
    server = _start(tmp_path, _env(TELEMETRY_DATABASE_URL=database_url))
    try:
        base = server.url
        run = {
            "event_id": "ev-proc-1",
            "run_id": "r1",
            "agent_name": "agent-proc",
            "job_type": "job",
            "start_time": "2026-03-01T11:00:00Z",
        }
        status, _, body = _request(base + "/api/v1/runs", "POST", run)
        assert (status, body["status"]) == (201, "created")
        status, _, body = _request(base + "/api/v1/runs/ev-proc-1", "PATCH", {"status": "success"})
        assert status == 200
        status, _, listed = _request(base + "/api/v1/runs?agent_name=agent-proc")
        assert status == 200
        assert [(r["event_id"], r["status"]) for r in listed] == [("ev-proc-1", "success")]
        status, _, health = _request(base + "/health")
        assert (status, health["backend"], health["status"]) == (200, "postgresql", "ok")
        assert "db_path" not in health
        assert "journal_mode" not in health
        status, _, metadata = _request(base + "/api/v1/metadata")
        assert metadata["agent_names"] == ["agent-proc"]
        status, _, body = _request(base + "/api/v1/stats?group_by=agent_name,status")
        assert status == 200
        assert [(g["key"], g["runs"]) for g in body["groups"]] == [
            ({"agent_name": "agent-proc", "status": "success"}, 1)
        ]
        with urllib.request.urlopen(base + "/api/v1/runs/export?format=ndjson") as response:
            exported = [json.loads(line) for line in response.read().splitlines()]
        assert [run["event_id"] for run in exported] == ["ev-proc-1"]
        # The data is in PostgreSQL, and the SQLite file was never made.
        stored = postgres_cluster.psql(
            "SELECT status FROM agent_runs WHERE event_id = 'ev-proc-1'",
            database=database_url.rsplit("/", 1)[1],
        )
        assert stored.strip() == "success"
        assert not (tmp_path / "unused.sqlite").exists()
        assert postgres_cluster.password not in server.log()
    finally:
        assert server.stop() == 0


def test_a_postgresql_database_url_is_taken_and_another_scheme_ignored(
    tmp_path: Path, database_url: str
) -> None:
    server = _start(tmp_path, _env(DATABASE_URL=database_url))
    try:
        assert _request(server.url + "/health")[2]["backend"] == "postgresql"
    finally:
        assert server.stop() == 0
    other = _start(tmp_path, _env(DATABASE_URL=f"sqlite:///{tmp_path}/x.sqlite"))
    try:
        assert _request(other.url + "/health")[2]["backend"] == "sqlite"
    finally:
        assert other.stop() == 0


def _bad_urls(cluster: pg_cluster.Cluster) -> dict[str, tuple[str, int, str]]:
    """name -> (URL, exit code, what the line must say)."""
    good = cluster.url("postgres")
    closed_port = daemons.free_port()
    return {
        "scheme": (good.replace("postgresql://", "mysql://"), 2, "scheme"),
        "unreachable": (
            good.replace(f":{cluster.port}/", f":{closed_port}/"),
            1,
            "cannot open",
        ),
        "password": (good.replace(cluster.password, "wrong-secret-1234"), 1, "password"),
        "database": (good.rsplit("/", 1)[0] + "/no_such_database", 1, "does not exist"),
        "no database": (good.rsplit("/", 1)[0] + "/", 2, "names no database"),
    }


@pytest.mark.parametrize("case", ["scheme", "unreachable", "password", "database", "no database"])
def test_a_wrong_database_url_stops_start_up_with_one_line(
    tmp_path: Path, postgres_cluster: pg_cluster.Cluster, case: str
) -> None:
    url, code, says = _bad_urls(postgres_cluster)[case]
    port = daemons.free_port()
    result = subprocess.run(
        [sys.executable, "-m", "server", "--port", str(port), "--db", str(tmp_path / "x.db")],
        env=_env(TELEMETRY_DATABASE_URL=url, TELEMETRY_LOG_LEVEL="ERROR"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "TELEMETRY_DATABASE_URL" in lines[0], lines[0]
    assert says in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    for secret in (postgres_cluster.password, "wrong-secret-1234"):
        assert secret not in result.stdout + result.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("command", ["backup", "vacuum", "export", "prune"])
def test_sqlite_only_commands_point_elsewhere_on_postgresql(
    tmp_path: Path, postgres_cluster: pg_cluster.Cluster, command: str
) -> None:
    args = {
        "backup": ["backup", str(tmp_path / "copy.sqlite")],
        "vacuum": ["vacuum"],
        "export": ["export", "--format", "csv", "--out", str(tmp_path / "runs.csv")],
        "prune": ["prune", "--older-than", "90d"],
    }[command]
    result = subprocess.run(
        [sys.executable, "-m", "server", *args, "--db", str(tmp_path / "x.db")],
        env=_env(TELEMETRY_DATABASE_URL=postgres_cluster.url("postgres")),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr
    assert postgres_cluster.password not in result.stderr
    assert not (tmp_path / "x.db").exists()
    if command == "backup":
        assert "pg_dump" in result.stderr
