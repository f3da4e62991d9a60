"""`telemetry-server prune | vacuum | export` against real files and a real server process."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemons import free_port, running_server

pytestmark = pytest.mark.integration

HOSTILE = ['a,"b"\r\nc', "=1+2", "-x", "@y", "ünï € 😀", "", " "]


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def cli(*args: str, db: Path, port: int | None = None, timeout: float = 120) -> Any:
    argv = [sys.executable, "-m", "server", *args, "--db", str(db)]
    if port is not None:
        argv += ["--port", str(port)]
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=False, text=True)


def post(url: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def get_json(url: str, path: str) -> Any:
    with urllib.request.urlopen(url + path, timeout=10) as response:
        return json.loads(response.read())


def runs(n: int, *, old: bool, prefix: str, running_every: int = 0) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        running = running_every and i % running_every == 0
        run: dict[str, Any] = {
            "event_id": f"{prefix}-{i}",
            "run_id": "r",
            "agent_name": f"agent-{i % 5}",
            "job_type": f"job-{i % 3}",
            "start_time": ago(200 if old else 1),
            "created_at": ago(200 - i / 1000 if old else 1),
            "status": "running" if running else "success",
            "error_details": HOSTILE[i % len(HOSTILE)],
        }
        if not running:
            run["end_time"] = run["created_at"]
        out.append(run)
    return out


def seed(url: str, batch: list[dict[str, Any]]) -> None:
    for start in range(0, len(batch), 1000):
        answer = post(url, "/api/v1/runs/batch", batch[start : start + 1000])
        assert answer["inserted"] == len(batch[start : start + 1000]), answer


def truth(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        return {
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
            "total": conn.execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0],
            "by_status": dict(
                conn.execute("SELECT status, COUNT(*) FROM agent_runs GROUP BY status")
            ),
            "running": conn.execute(
                "SELECT COUNT(*) FROM agent_runs WHERE status = 'running'"
            ).fetchone()[0],
        }
    finally:
        conn.close()


def test_prune_goes_through_the_running_server_and_its_counts_stay_exact(
    tmp_path: Path,
) -> None:
    db = tmp_path / "server.sqlite"
    with running_server(tmp_path, db_path=db) as server:
        seed(server.url, runs(400, old=True, prefix="old", running_every=10))
        seed(server.url, runs(50, old=False, prefix="new"))
        result = cli("prune", "--older-than", "90d", "--json", db=db, port=server.port)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["mode"] == "server"
        assert report["deleted"] == 360
        metrics = get_json(server.url, "/metrics")
        stored = truth(db)
        assert metrics["total_runs"] == stored["total"] == 90
        assert metrics["runs_by_status"] == stored["by_status"]
        assert stored["running"] == 40


def test_prune_dry_run_and_file_mode_without_a_server(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite"
    port = free_port()
    with running_server(tmp_path, db_path=db, port=port) as server:
        seed(server.url, runs(300, old=True, prefix="old", running_every=3))
    before = truth(db)
    dry = cli("prune", "--older-than", "90d", "--dry-run", "--json", db=db, port=port)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["mode"], report["dry_run"], report["deleted"]) == ("file", True, 200)
    assert truth(db) == before
    wet = cli("prune", "--older-than", "90d", db=db, port=port)
    assert wet.returncode == 0, wet.stderr
    assert "deleted 200 runs" in wet.stdout
    after = truth(db)
    assert after["total"] == 100
    assert after["running"] == 100
    assert after["integrity"] == "ok"


@pytest.mark.parametrize(
    "args",
    [
        ["--older-than", "soon"],
        ["--older-than", "0d"],
        ["--older-than", "-3d"],
        [],
        ["--older-than", "90d", "--status", "running"],
        ["--older-than", "90d", "--status", "bogus"],
    ],
)
def test_bad_prune_arguments_exit_2_and_change_nothing(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "server.sqlite"
    with running_server(tmp_path, db_path=db) as server:
        seed(server.url, runs(20, old=True, prefix="old"))
        before = truth(db)
        result = cli("prune", *args, db=db, port=server.port)
        assert result.returncode == 2
        assert "telemetry-server:" in result.stderr
        assert "Traceback" not in result.stderr
        assert truth(db) == before


def test_vacuum_converts_an_old_file_and_refuses_beside_a_server(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite"
    port = free_port()
    with running_server(tmp_path, db_path=db, port=port) as server:
        seed(server.url, runs(2000, old=True, prefix="old"))
        refused = cli("vacuum", db=db, port=port)
        assert refused.returncode == 1
        assert "stop it first" in refused.stderr
    legacy = sqlite3.connect(db, isolation_level=None)
    legacy.execute("PRAGMA auto_vacuum = NONE")
    legacy.execute("VACUUM")  # a file as servers before this change made them
    assert legacy.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    legacy.close()
    result = cli("vacuum", "--json", db=db, port=port)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["converted"] is True
    assert report["incremental_vacuum"] is True
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert conn.execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0] == 2000
    finally:
        conn.close()
    with running_server(tmp_path, db_path=db, port=port) as server:  # and prunes shrink it
        answer = post(server.url, "/api/v1/maintenance/prune", {"older_than": "90d"})
        assert answer["deleted"] == 2000
        assert answer["vacuumed_pages"] > 0


def test_export_cli_writes_the_same_bytes_as_the_api_atomically(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite"
    out = tmp_path / "exports" / "runs.csv"
    with running_server(tmp_path, db_path=db) as server:
        seed(server.url, runs(2500, old=False, prefix="x"))
        for fmt in ("csv", "ndjson"):
            target = out.with_suffix(f".{fmt}")
            result = cli(
                "export",
                "--format",
                fmt,
                "--out",
                str(target),
                "--agent-name",
                "agent-1",
                db=db,
                port=server.port,
            )
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["rows"] == 500
            url = f"{server.url}/api/v1/runs/export?format={fmt}&agent_name=agent-1"
            with urllib.request.urlopen(url, timeout=30) as response:
                assert target.read_bytes() == response.read()
        rows = list(csv.DictReader(io.StringIO(out.read_bytes().decode("utf-8"), newline="")))
        assert {row["error_details"] for row in rows} == set(HOSTILE)
        assert len(rows) == 500
        before = out.read_bytes()
        bad = cli("export", "--out", str(out), "--created-after", "nope", db=db, port=server.port)
        assert bad.returncode == 2
        assert out.read_bytes() == before  # the old export is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["runs.csv", "runs.ndjson"]


@pytest.mark.slow
def test_kill_9_mid_prune_leaves_a_consistent_database_and_exact_counts(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite"
    port = free_port()
    with running_server(tmp_path, db_path=db, port=port) as server:
        seed(server.url, runs(30_000, old=True, prefix="old", running_every=7))
        total = get_json(server.url, "/metrics")["total_runs"]
        prune = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "prune",
                "--older-than",
                "90d",
                "--db",
                str(db),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # some batches are committed, not all
                if get_json(server.url, "/metrics")["total_runs"] < total - 2000:
                    break
                time.sleep(0.02)
            server.stop(signal.SIGKILL)
        finally:
            prune.wait(timeout=60)
    stored = truth(db)
    assert stored["integrity"] == "ok"
    assert stored["running"] == len(range(0, 30_000, 7))  # no running run lost
    assert stored["running"] < stored["total"] < 30_000  # killed mid-prune
    with running_server(tmp_path, db_path=db, port=port) as server:
        metrics = get_json(server.url, "/metrics")
        assert metrics["total_runs"] == stored["total"]
        assert metrics["runs_by_status"] == stored["by_status"]
        answer = post(server.url, "/api/v1/maintenance/prune", {"older_than": "90d"})
        assert answer["deleted"] == stored["total"] - stored["running"]
        assert get_json(server.url, "/metrics")["total_runs"] == stored["running"]
