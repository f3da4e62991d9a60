"""spoold accept-path and drain benchmark, against live daemons on 127.0.0.1.

    python bench/spoold_bench.py [--seconds 8] [--backlog 20000]

Prints, side by side in one run:
1. accepted creates/s at concurrency 32 with durable acks (group commit, the default),
   and the same against a spoold with SPOOLD_MAX_GROUP=1 (one spool commit + fsync per
   request) — their ratio is what group commit buys. The upstream is down during this
   phase, so the drainer does not compete for the CPU.
2. the drain rate of the backlog those writes left, once the server comes up, next to the
   server's own batch-ingest rate (POST /api/v1/runs/batch, 100 runs per batch) and the
   peak RSS of spoold during the drain. Every accepted run is checked on the server.
Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Client, run_load


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return orjson.loads(response.read())


def start(
    args: list[str], env: dict[str, str], workdir: Path, ready: str
) -> subprocess.Popen[bytes]:
    log = (workdir / f"{args[0]}-{time.monotonic_ns()}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        env={**os.environ, **env},
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(400):  # bounded: 20 s
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited early")
        try:
            get_json(ready)
            return process
        except OSError:
            time.sleep(0.05)
    stop(process)
    raise RuntimeError(f"{args[0]} not ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_body(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "run_id": f"bench-{event_id[:8]}",
        "agent_name": f"bench-agent-{event_id[0]}",
        "job_type": "bench",
        "start_time": "2026-01-12T10:30:00Z",
        "items_discovered": 10,
    }


def accept_phase(
    workdir: Path, name: str, env: dict[str, str], seconds: float, prefix: str
) -> tuple[Any, subprocess.Popen[bytes], int]:
    port = free_port()
    spool = workdir / f"spool-{prefix}"
    process = start(
        ["spoold", "serve", "--port", str(port), "--spool-dir", str(spool)],
        {**env, "SPOOLD_LOG_LEVEL": "WARNING"},
        workdir,
        f"http://127.0.0.1:{port}/health",
    )

    async def create(client: Client, seq: int) -> None:
        await client.request(
            "POST", "/api/v1/runs", json=run_body(f"{prefix}-{seq}"), label="create"
        )

    result = run_load(
        f"http://127.0.0.1:{port}",
        create,
        name=name,
        concurrency=32,
        max_ops=2_000_000,
        max_seconds=seconds,
    )
    return result, process, port


def batch_ingest(url: str, seconds: float) -> float:
    async def batch(client: Client, seq: int) -> None:
        body = [run_body(f"ingest-{seq}-{i}-{uuid.uuid4().hex[:6]}") for i in range(100)]
        await client.request("POST", "/api/v1/runs/batch", json=body, label="batch")

    result = run_load(
        url, batch, name="server batch ingest", concurrency=4, max_ops=100_000, max_seconds=seconds
    )
    print(result.format())
    return result.ops_per_s * 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="spoold-bench-"))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the drainer only retries
    processes: list[subprocess.Popen[bytes]] = []
    try:
        per_request, p1, _ = accept_phase(
            workdir,
            "per-request commit (SPOOLD_MAX_GROUP=1)",
            {"SPOOLD_UPSTREAM_URL": dead, "SPOOLD_MAX_GROUP": "1"},
            args.seconds,
            "single",
        )
        processes.append(p1)
        stop(p1)
        grouped, p2, port = accept_phase(
            workdir,
            "group commit (default)",
            {"SPOOLD_UPSTREAM_URL": dead, "SPOOLD_BACKOFF_CAP_S": "0.5"},
            args.seconds,
            "group",
        )
        processes.append(p2)
        print(per_request.format())
        print(grouped.format())
        print(
            f"group commit / per-request commit: {grouped.ops_per_s / per_request.ops_per_s:.1f}x"
        )

        backlog = get_json(f"http://127.0.0.1:{port}/health")["spool"]["depth"]
        stop(p2)  # restart it pointing at a live server: the drain of the backlog
        server_port = free_port()
        db = workdir / "server.sqlite"
        server = start(
            ["server", "--port", str(server_port), "--db", str(db)],
            {"TELEMETRY_LOG_LEVEL": "WARNING"},
            workdir,
            f"http://127.0.0.1:{server_port}/health",
        )
        processes.append(server)
        ingest = batch_ingest(f"http://127.0.0.1:{server_port}", min(args.seconds, 5.0))
        began = time.monotonic()
        sidecar = start(
            ["spoold", "serve", "--port", str(port), "--spool-dir", str(workdir / "spool-group")],
            {
                "SPOOLD_UPSTREAM_URL": f"http://127.0.0.1:{server_port}",
                "SPOOLD_LOG_LEVEL": "WARNING",
            },
            workdir,
            f"http://127.0.0.1:{port}/health",
        )
        processes.append(sidecar)
        ready_s = time.monotonic() - began
        peak = 0.0
        for _ in range(6000):  # bounded: 10 minutes
            peak = max(peak, rss_mb(sidecar.pid))
            if get_json(f"http://127.0.0.1:{port}/health")["spool"]["depth"] == 0:
                break
            time.sleep(0.1)
        drain_s = time.monotonic() - began - ready_s
        print(
            f"spoold restarted on a {backlog:,}-operation backlog: accepting after {ready_s:.2f} s"
        )
        print(
            f"drain: {backlog:,} ops in {drain_s:.1f} s = {backlog / drain_s:,.0f} ops/s "
            f"= {100 * backlog / drain_s / ingest:.0f}% of the server's batch ingest "
            f"({ingest:,.0f} runs/s); peak spoold RSS {peak:.0f} MB"
        )
        stop(sidecar)
        stop(server)
        with sqlite3.connect(db) as conn:
            stored = conn.execute(
                "SELECT COUNT(*) FROM agent_runs WHERE event_id LIKE 'group-%'"
            ).fetchone()[0]
        acked = grouped.recording.labels["create"].statuses.get(201, 0)
        print(
            f"verification: {acked:,} creates acknowledged, {stored:,} on the server"
            f" -> {'OK' if stored >= acked else 'LOST ' + str(acked - stored)}"
        )
        return 0 if stored >= acked else 2
    finally:
        for process in processes:
            stop(process)


if __name__ == "__main__":
    sys.exit(main())
