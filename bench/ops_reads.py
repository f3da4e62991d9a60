"""Latency of the operational reads, ``/metrics`` and ``/api/v1/metadata``, at rest and
right after a write that adds a new agent.

    python bench/ops_reads.py                          # 1M rows, 3 runs (prefill ~3 min)
    python bench/ops_reads.py --rows 1000000 --json ops.json
    python bench/ops_reads.py --rows 100000 --db /tmp/ops.sqlite   # keep the prefill
    PYTHONPATH=/tmp/ops-old python bench/ops_reads.py --db /tmp/ops.sqlite   # older server

Prints figures, asserts nothing (not a test). Prefills a database with the fleet's skew
(``bench/index_cost.py``: 2,000 agents, 20 job types, 85% success / 8% failure / 3%
running), unless ``--db`` names a file already prefilled. Each run starts the real server
(the ``telemetry-server`` of this interpreter; ``PYTHONPATH`` picks the tree it serves)
on 127.0.0.1 and, on one keep-alive connection:

1. at rest: ``--rounds`` reads of each endpoint in a row;
2. right after a write: ``--rounds`` rounds of POST /api/v1/runs with an agent name never
   seen before, then one read of the endpoint as soon as the write is answered (metadata
   and metrics in separate loops). Each read is checked to list the new agent.

Latency is shown twice: the client's (request sent to answer read: HTTP, both processes'
scheduling on a shared machine included) and the server's own (the handler's time, from
the ``duration_ms`` of its request log line), and at rest the server's CPU per read
(``/proc/<pid>/stat``). After writes, the slowest reads are shown with what the server's
threads did meanwhile (``/proc/<pid>/task/*/schedstat``): the event loop's CPU, its time
runnable but waiting for a CPU (the machine's load), the other threads' CPU. The target is 2 ms. The runs the bench adds are deleted (directly in the file) after each run, so
every run, and every server version, sees the same database.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_cost import load
from report import Figure, format_row, write_json
from server_bench import HOST, ServerProcess

TARGET_MS = 2.0
PREFIX = "ops-bench-agent-"


def request(
    client: http.client.HTTPConnection, method: str, path: str, body: Any = None
) -> tuple[float, int, Any]:
    """One request; its latency in ms, status and parsed answer."""
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    started = time.perf_counter()
    client.request(method, path, body=payload, headers=headers)
    response = client.getresponse()
    raw = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed, response.status, json.loads(raw)


def new_run(agent: str) -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    return {
        "event_id": event_id,
        "run_id": f"ops-{event_id[:8]}",
        "agent_name": agent,
        "job_type": "job_type_00",
        "start_time": "2026-06-01T00:00:00Z",
        "status": "success",
    }


def server_ms(log: Path, offset: int, path: str) -> list[float]:
    """The handler durations the server logged (JSON lines) for GET path since offset."""
    with log.open("rb") as handle:
        handle.seek(offset)
        lines = handle.read().splitlines()
    durations = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "http_request" and (entry.get("method"), entry.get("route")) == (
            "GET",
            path,
        ):
            durations.append(float(entry["duration_ms"]))
    return durations


def schedstat(pid: int, tid: int) -> tuple[int, int]:
    """(ns on a CPU, ns waiting on a run queue) of one thread of the server."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        return int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return 0, 0


def others_cpu_ns(pid: int) -> int:
    """CPU ns of every thread of the server but its event loop's (the writer, the
    checkpointer, the readers)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.name != str(pid):
            total += schedstat(pid, int(task.name))[0]
    return total


@dataclass(frozen=True)
class Attribution:
    """What the server's threads did while one read was in flight (ms)."""

    loop_cpu: float
    loop_queued: float  # the event loop thread runnable but not running (the machine)
    others_cpu: float

    @classmethod
    def between(cls, before: tuple[int, int, int], after: tuple[int, int, int]) -> Attribution:
        return cls(*((b - a) / 1e6 for a, b in zip(before, after, strict=True)))


def sample(pid: int) -> tuple[int, int, int]:
    cpu, queued = schedstat(pid, pid)
    return cpu, queued, others_cpu_ns(pid)


def worst_reads(served: list[float], attributions: list[Attribution], count: int = 3) -> str:
    """The slowest reads (server side) with what the server's threads did meanwhile."""
    if len(served) != len(attributions):
        return "  (attribution: log lines and reads do not pair up)"
    worst = sorted(zip(served, attributions, strict=True), key=lambda pair: -pair[0])[:count]
    return "  slowest: " + "; ".join(
        f"{ms:.2f} ms (loop CPU {a.loop_cpu:.2f}, loop waiting for a CPU {a.loop_queued:.2f},"
        f" other threads' CPU {a.others_cpu:.2f})"
        for ms, a in worst
    )


def has_agent(path: str) -> Callable[[Any, str], bool]:
    if path == "/metrics":
        return lambda body, agent: agent in body.get("agents", {})
    return lambda body, agent: agent in body["agent_names"]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def summary(name: str, latencies: list[float], extra: str = "") -> str:
    if not latencies:
        return f"  {name:34s} (no figures)"
    p50 = statistics.median(latencies)
    worst = max(latencies)
    return (
        f"  {name:34s} p50 {p50:7.3f}  p99 {p99(latencies):7.3f}  max {worst:7.3f} ms"
        f"  (max/target {worst / TARGET_MS:5.0%}){extra}"
    )


@dataclass
class Samples:
    """One endpoint's latencies in one condition, pooled over the runs (ms)."""

    client: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)


@dataclass
class RunResult:
    lines: list[str]
    #: (path, "at rest" or "right after a write") -> latencies
    samples: dict[tuple[str, str], Samples]
    stale: int = 0
    failed_writes: int = 0


AT_REST = "at rest"
AFTER_WRITE = "right after a write"


def one_run(db: Path, log: Path, run: int, rounds: int, log_level: str) -> RunResult:
    server = ServerProcess(db, log, log_level)
    server.start()
    result = RunResult(
        [f"run {run + 1}: server up in {server.startup_s:.2f} s (ANALYZE and counts included)"],
        {},
    )
    lines = result.lines
    try:
        client = http.client.HTTPConnection(HOST, int(server.base_url.rsplit(":", 1)[1]))
        for path in ("/metrics", "/api/v1/metadata"):
            request(client, "GET", path)  # first call (a cache fills, if there is one)
            time.sleep(0.2)  # let the log line reach the file
            offset, cpu = log.stat().st_size, server.cpu_seconds()
            rest = [request(client, "GET", path)[0] for _ in range(rounds)]
            cpu_ms = (server.cpu_seconds() - cpu) / rounds * 1000
            lines.append(summary(f"{path} at rest", rest, f"  server CPU/read {cpu_ms:.3f} ms"))
            time.sleep(0.2)
            served = server_ms(log, offset, path)
            lines.append(summary("  (server side)", served))
            result.samples[(path, AT_REST)] = Samples(rest, served)
        for path in ("/metrics", "/api/v1/metadata"):
            check = has_agent(path)
            time.sleep(0.2)
            offset = log.stat().st_size
            after, writes, stale = [], [], 0
            attributions = []
            for i in range(rounds):
                agent = f"{PREFIX}{run}-{path[-4:]}-{i}"
                wrote, status, _ = request(client, "POST", "/api/v1/runs", new_run(agent))
                result.failed_writes += status != 201
                writes.append(wrote)
                before = sample(server.pid)
                elapsed, status, body = request(client, "GET", path)
                attributions.append(Attribution.between(before, sample(server.pid)))
                after.append(elapsed)
                stale += status != 200 or not check(body, agent)
            result.stale += stale
            lines.append(
                summary(f"{path} right after a write", after, f"  new agent missing: {stale}")
            )
            time.sleep(0.2)
            served = server_ms(log, offset, path)
            lines.append(summary("  (server side)", served))
            lines.append(worst_reads(served, attributions))
            lines.append(summary("  (the writes themselves)", writes))
            result.samples[(path, AFTER_WRITE)] = Samples(after, served)
        client.close()
    finally:
        server.stop()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("DELETE FROM agent_runs WHERE agent_name LIKE ?", (PREFIX + "%",))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return result


def figures_of(results: list[RunResult], rows: int) -> list[Figure]:
    """Server-side p99 and max per endpoint and condition (target 2 ms), the client's
    p99 for information."""
    pooled: dict[tuple[str, str], Samples] = {}
    for result in results:
        for key, samples in result.samples.items():
            into = pooled.setdefault(key, Samples())
            into.client += samples.client
            into.server += samples.server
    figures = []
    for (path, condition), samples in pooled.items():
        scenario = f"{path} {condition}"
        if samples.server:
            for metric, value in (
                ("p99 ms (server)", p99(samples.server)),
                ("max ms (server)", max(samples.server)),
            ):
                figures.append(Figure(scenario, metric, value, TARGET_MS, False, rows))
        if samples.client:
            figures.append(
                Figure(
                    scenario,
                    "p99 ms (client)",
                    p99(samples.client),
                    rows=rows,
                    note="HTTP and both processes' scheduling included",
                ),
            )
    return figures


def main() -> None:
    # The stale-run reaper off: the fleet prefill's old `running` runs (3%) would be reaped
    # during the measurement, a one-time upgrade cost (bench/stale_bench.py measures it),
    # not the steady state, where a reaper pass with nothing due is one indexed read.
    os.environ.setdefault("TELEMETRY_STALE_AFTER_S", "0")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--db", type=Path, default=None, help="prefilled file to reuse/keep")
    parser.add_argument("--log-level", default="INFO", help="TELEMETRY_LOG_LEVEL of the server")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "telemetry.sqlite"
        if not db.exists():
            started = time.monotonic()
            load(db, "new", "OFF", args.rows)
            print(f"prefilled {args.rows:,} rows in {time.monotonic() - started:.0f} s")
        conn = sqlite3.connect(db)
        rows, agents, jobs = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT agent_name), COUNT(DISTINCT job_type) FROM agent_runs"
        ).fetchone()
        conn.close()
        print(
            f"ops reads: {rows:,} rows, {agents:,} agents, {jobs} job types;"
            f" {args.rounds} rounds per figure; server from"
            f" PYTHONPATH={os.environ.get('PYTHONPATH', '(unset)')}; sqlite {sqlite3.sqlite_version}"
        )
        results = []
        for run in range(args.runs):
            result = one_run(db, Path(tmp) / "server.log", run, args.rounds, args.log_level)
            results.append(result)
            for line in result.lines:
                print(line, flush=True)
        figures = figures_of(results, rows)
        verified = all(r.stale == 0 and r.failed_writes == 0 for r in results)
        if args.json is not None:  # first: a closed stdout (| head) must not lose it
            write_json(args.json, figures, verified=verified)
        print()
        for figure in figures:
            print(format_row(figure))
        print(f"every write answered 201 and was listed by the next read: {verified}")


if __name__ == "__main__":
    main()
