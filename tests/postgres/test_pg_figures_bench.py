"""bench/pg_replicas_vs_sqlite.py end to end at tiny sizes (``--quick``), so the issue's
figures can always be taken again: a real PostgreSQL cluster, 3 real replicas and a real
SQLite server, real HTTP. Speed is not asserted (a bench measures it), only that every
request succeeded and every figure came out as a number for both backends."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pg_cluster
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "pg_replicas_vs_sqlite.py"
FIGURES = (
    "list agent_name=A&status=S p99",
    "stats status, all rows p50",
    "batch ingest (100/request, c=6)",
    "lifecycle create+PATCH (c=32)",
    "lifecycle patch p99",
)


def _run_bench(tmp_path: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """The bench in a session of its own: on a timeout its whole group (the servers it
    started) is killed, then its orphaned cluster is swept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env.pop("DATABASE_URL", None)
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick", "--rows", "1500", "--workdir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate(timeout=30)
        pg_cluster.sweep_orphans()
        pytest.fail(f"bench did not finish in {timeout_s:.0f} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _figure(stdout: str, name: str) -> tuple[float, float]:
    """(sqlite, postgres) of one printed figure line."""
    line = next(line for line in stdout.splitlines() if line.startswith(name))
    fields = line[len(name) :].split()
    return float(fields[0].replace(",", "")), float(fields[1].replace(",", ""))


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_bench_runs_end_to_end_on_both_backends(tmp_path: Path) -> None:
    pg_cluster.require_postgres()
    result = _run_bench(tmp_path, timeout_s=240)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "FAILED" not in result.stdout
    assert "3 replicas on one database" in result.stdout
    for name in FIGURES:
        lite, post = _figure(result.stdout, name)
        assert 0 < lite < math.inf, (name, result.stdout)
        assert 0 < post < math.inf, (name, result.stdout)
    logs = sorted(path.name for path in tmp_path.glob("*.log"))
    assert logs == ["replica-0.log", "replica-1.log", "replica-2.log", "sqlite-server.log"]
    assert _processes_naming(tmp_path) == [], "a server the bench started is still running"


def _processes_naming(directory: Path) -> list[int]:
    """PIDs whose command line names a file in directory (the servers' --db)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(directory).encode() in cmdline:
            found.append(int(proc.name))
    return found
