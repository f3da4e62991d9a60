"""GET /api/v1/stats at fleet scale: both storage designs, their read and write costs.

    python bench/stats_bench.py --rows 1000000 [--repeat 40] [--json out.json]

1. Prefill ``--rows`` fleet-shaped runs (``index_cost.fleet_rows``: 2,000 agents Zipf,
   20 job types, 85/8/3% statuses, 90 days) into a database of the schema *before* the
   rollups, then time the rollups' migration (its backfill) on them: the upgrade cost.
2. Start a real server on it and time each query shape over HTTP (``--repeat`` times,
   after warm-ups): latency p50/p99 and the server's CPU per query, against the 50 ms
   target. Every answer is checked against the same query read from the runs alone
   (``verified``), and the overall count against the rows loaded.
3. The other design, index-only scans: the same shapes computed from the runs alone
   (``compute_stats(use_rollups=False)``) in-process, first through the existing
   start_time index, then through a covering index built for it (its build time and
   size reported); the rollup design's in-process time beside them.
4. Write cost: a lifecycle (insert ``running``, then PATCH to ``success``, in writer-like
   transactions of 64 operations) on a fresh database of ``--write-rows`` prefilled runs,
   CPU per operation: before the rollups, with them, and with the covering index.

Run it on a quiet machine for latency figures; on a busy one read the CPU figures (the
server's CPU per query, the in-process CPU medians), which waiting for a core leaves out.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index_cost import END, fleet_rows, migrate_to
from report import Figure, format_row, write_json
from server_bench import ServerProcess

from server.contract.stats import StatsQuery
from server.storage.rollups import ROLLUP_STATEMENTS
from server.storage.runs import _INSERT_SQL
from server.storage.schema import MIGRATIONS
from server.storage.stats import compute_stats

TARGET_MS = 50.0
#: The rollups' migration, and the version before it: the prefill's schema, so the
#: migration is timed (later, unrelated migrations are left to the server's start).
ROLLUPS = next(m.version for m in MIGRATIONS if m.statements == ROLLUP_STATEMENTS)
BEFORE = ROLLUPS - 1


def migrate_to_rollups(conn: sqlite3.Connection) -> list[int]:
    """From ``BEFORE`` to the rollups' version, in one transaction; the versions applied."""
    conn.execute("BEGIN")
    for migration in MIGRATIONS[BEFORE:ROLLUPS]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {ROLLUPS:d}")
    conn.execute("COMMIT")
    return [ROLLUPS]


COVERING_INDEX = (
    "CREATE INDEX idx_stats_cover ON agent_runs(start_time, job_type, agent_name, status,"
    " duration_ms, items_discovered, items_succeeded, items_failed)"
)
#: "Now" for the windows: not on a day boundary, so the rollups' edges are read too.
NOW = END - timedelta(hours=5, minutes=37)


def iso(moment: Any) -> str:
    return str(moment.isoformat(timespec="seconds").replace("+00:00", "Z"))


SHAPES: dict[str, dict[str, str]] = {
    "job_type,day over 7 days": {
        "group_by": "job_type,day",
        "start_time_from": iso(NOW - timedelta(days=7)),
        "start_time_to": iso(NOW),
    },
    "agent_name over 1 day": {
        "group_by": "agent_name",
        "start_time_from": iso(NOW - timedelta(days=1)),
        "start_time_to": iso(NOW),
    },
    "status overall (no window)": {"group_by": "status"},
    "hour over 1 day, job_type filter": {
        "group_by": "hour",
        "job_type": "job_type_03",
        "start_time_from": iso(NOW - timedelta(days=1)),
        "start_time_to": iso(NOW),
    },
    "job_type over 30 days": {
        "group_by": "job_type",
        "start_time_from": iso(NOW - timedelta(days=30)),
        "start_time_to": iso(NOW),
    },
}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def prefill(path: Path, rows: int, version: int) -> float:
    """Fleet rows into a database of ``version``; the seconds the inserts took."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB: the unique event_id index
    migrate_to(conn, version)
    started = time.perf_counter()
    for batch in fleet_rows(rows):
        conn.execute("BEGIN")
        conn.executemany(_INSERT_SQL, batch)
        conn.execute("COMMIT")
    spent = time.perf_counter() - started
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return spent


def time_migration(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of migrating to the rollups (their backfill included)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    wall, cpu = time.perf_counter(), time.process_time()
    applied = migrate_to_rollups(conn)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert applied == [ROLLUPS], applied
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return wall, cpu


@dataclass
class Timed:
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float
    body: dict[str, Any]


def http_shape(server: ServerProcess, params: dict[str, str], repeat: int) -> Timed:
    host, port = server.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    target = "/api/v1/stats?" + urllib.parse.urlencode(params)

    def get() -> dict[str, Any]:
        conn.request("GET", target)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{target}: {response.status} {body[:300]!r}")
        return dict(orjson.loads(body))

    body = get()
    for _ in range(2):
        get()
    latencies = []
    cpu = server.cpu_seconds()
    for _ in range(repeat):
        started = time.perf_counter()
        get()
        latencies.append((time.perf_counter() - started) * 1000)
    cpu = server.cpu_seconds() - cpu
    conn.close()
    return Timed(percentile(latencies, 0.5), percentile(latencies, 0.99), cpu * 1000 / repeat, body)


def in_process_ms(
    conn: sqlite3.Connection, params: dict[str, str], repeat: int, **options: Any
) -> tuple[float, list[dict[str, Any]]]:
    """Median CPU ms (this thread's) of compute_stats on a read connection: on a shared
    machine the wall time is mostly waiting for a core."""
    query = StatsQuery.model_validate(params)
    answer = compute_stats(conn, query, **options)
    times = []
    for _ in range(repeat):
        started = time.thread_time()
        conn.execute("BEGIN")
        compute_stats(conn, query, **options)
        conn.execute("COMMIT")
        times.append((time.thread_time() - started) * 1000)
    return statistics.median(times), answer


def lifecycle_cpu_us(path: Path, setup: Callable[[sqlite3.Connection], None], runs: int) -> float:
    """CPU us per write (insert running, then update to success) on an existing database,
    in transactions of 64 writes, as the writer groups them."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # CPU, not fsyncs, is what differs
    setup(conn)
    rows = [row for batch in fleet_rows(runs, seed=99) for row in batch]
    status_at = 4  # event_id, run_id, agent_name, job_type, status
    rows = [(*row[:status_at], "running", *row[status_at + 1 :]) for row in rows]
    update = (
        "UPDATE agent_runs SET status = 'success', duration_ms = ?, items_succeeded = ?,"
        " end_time = ?, updated_at = ? WHERE event_id = ?"
    )
    cpu = time.process_time()
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        conn.execute("BEGIN")
        conn.executemany(_INSERT_SQL, chunk)
        for n, row in enumerate(chunk):
            conn.execute(update, (1000 + 37 * n, n, row[5], row[5], row[0]))
        conn.execute("COMMIT")
    cpu = time.process_time() - cpu
    conn.close()
    return cpu * 1e6 / (2 * len(rows))


def write_costs(workdir: Path, prefilled: int, runs: int) -> dict[str, float]:
    """CPU per write of each design, on copies of one prefilled database (the least of
    three interleaved rounds)."""
    base = workdir / "write-base.sqlite"
    prefill(base, prefilled, BEFORE)
    designs: dict[str, Callable[[sqlite3.Connection], None]] = {
        "no stats storage": lambda conn: None,
        "rollups (triggers)": lambda conn: migrate_to_rollups(conn) and None,
        "index-only (covering index)": lambda conn: conn.execute(COVERING_INDEX) and None,
    }
    costs: dict[str, float] = {}
    for _ in range(3):  # interleaved rounds, the least of each: noise only adds
        for name, setup in designs.items():
            copy = workdir / "write-copy.sqlite"
            copy.write_bytes(base.read_bytes())
            cost = lifecycle_cpu_us(copy, setup, runs)
            costs[name] = min(cost, costs.get(name, cost))
            copy.unlink()
    base.unlink()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=40, help="timed queries per shape")
    parser.add_argument("--write-rows", type=int, default=50_000, help="prefill of the write test")
    parser.add_argument("--write-runs", type=int, default=4_000, help="lifecycles per design")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--prefilled",
        type=Path,
        help="a copy of the prefilled database (schema before the rollups) is kept here and "
        "reused when present, for repeated runs",
    )
    args = parser.parse_args()

    figures: list[Figure] = []
    verified = True
    rows = args.rows

    def add(scenario: str, metric: str, value: float, target: float | None = None,
            note: str = "", higher: bool = False) -> None:  # fmt: skip
        figure = Figure(scenario, metric, value, target, higher, rows, note)
        figures.append(figure)
        print(format_row(figure), flush=True)

    with tempfile.TemporaryDirectory(prefix="stats-bench-") as tmp:
        workdir = Path(tmp)
        db = workdir / "stats.sqlite"
        if args.prefilled is not None and args.prefilled.exists():
            shutil.copyfile(args.prefilled, db)
        else:
            print(f"prefilling {rows:,} fleet runs (schema {BEFORE}) ...", flush=True)
            load_s = prefill(db, rows, BEFORE)
            add("prefill (schema before rollups)", "rows/s", rows / load_s, higher=True)
            if args.prefilled is not None:
                shutil.copyfile(db, args.prefilled)
        size_before = db.stat().st_size
        wall, cpu = time_migration(db)
        add("rollups migration (backfill)", "wall s", wall, note=f"CPU {cpu:.1f} s")
        size_after = db.stat().st_size
        add("file size before rollups", "MB", size_before / 1e6)
        add("file growth from the rollups", "MB", (size_after - size_before) / 1e6)

        # The reaper off: the fleet's old `running` runs would be reaped while the answers
        # are taken, so the HTTP answers and the later in-process ones would differ.
        os.environ["TELEMETRY_STALE_AFTER_S"] = "0"
        server = ServerProcess(db, workdir / "server.log", "warning")
        server.start()
        answers: dict[str, dict[str, Any]] = {}
        try:
            for name, params in SHAPES.items():
                timed = http_shape(server, params, args.repeat)
                answers[name] = timed.body
                add(f"stats {name} (HTTP, rollups)", "p50 ms", timed.p50_ms, TARGET_MS)
                add(f"stats {name} (HTTP, rollups)", "p99 ms", timed.p99_ms, TARGET_MS)
                add(f"stats {name} (HTTP, rollups)", "server CPU ms/q", timed.server_cpu_ms)
        finally:
            server.stop()

        overall = answers["status overall (no window)"]["groups"]
        if sum(group["runs"] for group in overall) != rows:
            verified = False
            print("MISMATCH: the overall counts do not add up to the rows loaded", flush=True)

        reader = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True,
                                 isolation_level=None)  # fmt: skip
        slow_repeat = max(2, args.repeat // 10)
        for name, params in SHAPES.items():
            fast, mine = in_process_ms(reader, params, args.repeat)
            raw, theirs = in_process_ms(reader, params, slow_repeat, use_rollups=False)
            if mine != theirs:
                verified = False
                print(f"MISMATCH: {name}: rollups and runs disagree", flush=True)
            if mine != answers[name]["groups"]:
                verified = False
                print(f"MISMATCH: {name}: the server's answer and the rollups disagree", flush=True)
            add(f"stats {name} (in-process, rollups)", "median CPU ms", fast, TARGET_MS)
            add(f"stats {name} (in-process, runs via start index)", "median CPU ms", raw, TARGET_MS)
        reader.close()

        writer = sqlite3.connect(db, isolation_level=None)
        started = time.perf_counter()
        writer.execute(COVERING_INDEX)
        built = time.perf_counter() - started
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        writer.close()
        add("covering index build (index-only design)", "wall s", built)
        add("file growth from the covering index", "MB", (db.stat().st_size - size_after) / 1e6)
        reader = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True,
                                 isolation_level=None)  # fmt: skip
        for name, params in SHAPES.items():
            covered, _ = in_process_ms(
                reader, params, slow_repeat, use_rollups=False, raw_index="idx_stats_cover"
            )
            add(f"stats {name} (in-process, covering index)", "median CPU ms", covered, TARGET_MS)
        reader.close()

        print(f"write cost: {args.write_runs:,} lifecycles on {args.write_rows:,} runs ...")
        costs = write_costs(workdir, args.write_rows, args.write_runs)
        base = costs["no stats storage"]
        for name, cost in costs.items():
            add(f"write CPU per op: {name}", "us/op", cost, note=f"{cost / base:.2f}x of none")

    if args.json is not None:
        write_json(args.json, figures, verified=verified)
    print("verified" if verified else "NOT verified")


if __name__ == "__main__":
    main()
