"""What the list indexes cost and buy: the old index set (migrations 1-3) against the
new one (migration 4: one index per combination of equality filters), side by side.

    python bench/index_cost.py                       # 100k rows, 3 runs (~3 min)
    python bench/index_cost.py --rows 1000000 --runs 1 --sync FULL

Prints figures, asserts nothing (not a test). For each run, and alternating the two
index sets so drift on a shared machine hits both alike:

1. Insert rate: fresh WAL file with the server's schema, rows in ``executemany``
   batches of 500, one transaction per batch, at each ``--sync`` level; rows/s.
2. File size once all rows are in (WAL checkpointed), and bytes per run.
3. Read latency on those files after ANALYZE (as the server runs it at start):
   the guide's headline query ``agent_name=A&status=success&limit=100`` for
   agents drawn by popularity, plus the other equality pairs, old SQL (planner's
   choice, as before migration 4) against the new (``INDEXED BY``).
4. The start_time window cut-over (``SMALL_WINDOW_RUNS``): a window of W runs a
   month back, read through the start_time index and sorted, against the
   newest-first walk of the equality index.
5. Migration 4 on the old file: how long an upgrading server spends building
   the four new indexes at start-up.

Data has a real fleet's skew: 2,000 agents (Zipf-like popularity), 20 job types,
statuses 85% success / 8% failure / 3% running / rest spread, 90 days of history,
1% of runs recorded days after they started; other fields as ``server_bench`` posts
them (~600 B per run).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.contract.models import RunCreate, RunQuery
from server.storage.runs import _INSERT_COLUMNS, _INSERT_SQL, insert_params, query_sql
from server.storage.schema import MIGRATIONS, migrate

AGENTS = tuple(f"team-{i % 40:02d}.agent-{i:04d}" for i in range(2000))
JOBS = tuple(f"job_type_{i:02d}" for i in range(20))
STATUSES = ("success", "failure", "running", "partial", "timeout", "cancelled")
STATUS_WEIGHTS = (85, 8, 3, 2, 1, 1)
AGENT_CUM = tuple(
    sum((k + 1) ** -0.8 for k in range(i + 1)) for i in range(len(AGENTS))
)  # Zipf-like
HISTORY = timedelta(days=90)
END = datetime(2026, 6, 1, tzinfo=UTC)
BATCH = 500
NEW_INDEXES = tuple(
    statement.split()[2] for statement in MIGRATIONS[3].statements if "CREATE INDEX" in statement
)
_AT = {column: _INSERT_COLUMNS.index(column) for column in _INSERT_COLUMNS}


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def templates(rng: random.Random, count: int = 500) -> list[list[Any]]:
    """Realistic rows (the server's own insert parameters) to vary per run."""
    now = stamp(END)
    out = []
    for i in range(count):
        host = rng.randrange(200)
        run = RunCreate.model_validate(
            {
                "event_id": f"template-{i}",
                "run_id": f"template-{i}",
                "agent_name": AGENTS[0],
                "job_type": JOBS[0],
                "start_time": now,
                "status": "success",
                "product": "seo-intelligence",
                "platform": "api",
                "website": f"site{host % 17}.example.com",
                "host": f"worker-{host:03d}",
                "environment": "production",
                "trigger_type": "cron",
                "git_repo": f"https://github.com/example-org/repo-{host % 9}",
                "git_branch": "main",
                "end_time": now,
                "duration_ms": rng.randrange(100_000),
                "items_discovered": rng.randrange(500),
                "items_succeeded": rng.randrange(500),
                "output_summary": f"processed {rng.randrange(500)} items",
                "metrics_json": {"model": "small", "tokens_in": rng.randrange(10_000)},
                "context_json": {"attempt": 1},
            }
        )
        out.append(list(insert_params(run, now)))
    return out


def fleet_rows(total: int, seed: int = 10) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of BATCH rows, oldest first, with the fleet's skew."""
    rng = random.Random(seed)
    pool = templates(rng)
    step = HISTORY / total
    origin = END - HISTORY
    batch: list[tuple[Any, ...]] = []
    for i in range(total):
        created = origin + step * i
        start = created - timedelta(seconds=rng.randrange(60))
        if rng.random() < 0.01:
            start -= timedelta(days=rng.randrange(1, 8))
        row = list(pool[i % len(pool)])
        agent = rng.choices(AGENTS, cum_weights=AGENT_CUM)[0]
        row[_AT["event_id"]] = f"{seed:04d}-{i:012d}"
        row[_AT["run_id"]] = f"{stamp(start)}-{agent}"
        row[_AT["agent_name"]] = agent
        row[_AT["job_type"]] = rng.choice(JOBS)
        row[_AT["status"]] = rng.choices(STATUSES, weights=STATUS_WEIGHTS)[0]
        row[_AT["start_time"]] = stamp(start)
        row[_AT["created_at"]] = row[_AT["updated_at"]] = stamp(created)
        batch.append(tuple(row))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def open_db(path: Path, index_set: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    migrate(conn)
    if index_set == "old":
        for index in NEW_INDEXES:
            conn.execute(f"DROP INDEX {index}")
    return conn


@dataclass
class Loaded:
    rows_per_s: float
    file_bytes: int


def load(path: Path, index_set: str, synchronous: str, rows: int) -> Loaded:
    """Insert rows in batches of BATCH, one transaction each (the insert rate's timing
    excludes building the rows)."""
    conn = open_db(path, index_set, synchronous)
    spent = 0.0
    for batch in fleet_rows(rows):
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT_SQL, batch)
        conn.execute("COMMIT")
        spent += time.perf_counter() - started
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return Loaded(rows / spent, path.stat().st_size)


def old_sql(query: RunQuery) -> tuple[str, list[Any]]:
    """The list query as the server issued it before migration 4 (planner's choice)."""
    sql, params = query_sql(query)
    return sql.replace(f" INDEXED BY {sql.split(' INDEXED BY ')[1].split()[0]}", ""), params


def timed_ms(conn: sqlite3.Connection, sql: str, params: list[Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        conn.execute(sql, params).fetchall()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def reader(path: Path) -> sqlite3.Connection:
    """After ANALYZE with the server's analysis_limit, as a server starts."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA analysis_limit = 1000")
    conn.execute("ANALYZE")
    return conn


QUERIES: list[tuple[str, Callable[[str], RunQuery]]] = [
    ("agent+status=success", lambda a: RunQuery(agent_name=a, status="success")),
    ("agent+status=failure", lambda a: RunQuery(agent_name=a, status="failure")),
    ("agent+job", lambda a: RunQuery(agent_name=a, job_type=JOBS[3])),
    ("job+status=failure", lambda a: RunQuery(job_type=JOBS[3], status="failure")),
    (
        "agent+job+status",
        lambda a: RunQuery(agent_name=a, job_type=JOBS[3], status="success"),
    ),
]


def read_latency(old: Path, new: Path) -> list[str]:
    lines = []
    old_conn, new_conn = reader(old), reader(new)
    for name, make in QUERIES:
        for rank in (0, 10, 200, 1500):
            query = make(AGENTS[rank])
            old_ms = timed_ms(old_conn, *old_sql(query))
            new_ms = timed_ms(new_conn, *query_sql(query))
            lines.append(
                f"  {name:24s} agent rank {rank:5d}: old {old_ms:9.2f} ms   new {new_ms:7.2f} ms"
                f"   ({old_ms / new_ms:7.1f}x)"
            )
    old_conn.close()
    new_conn.close()
    return lines


def window_cutover(new: Path, rows: int) -> list[str]:
    """A start_time window of W runs a month back: read whole through the start_time
    index and sorted (SMALL_WINDOW_RUNS and below) vs walked newest first."""
    conn = reader(new)
    lines = []
    per_second = rows / HISTORY.total_seconds()
    low = END - timedelta(days=30)
    for equalities in ({}, {"status": "success"}, {"agent_name": AGENTS[0]}):
        for window_runs in (100, 500, 2000, 8000, 32000):
            high = low + timedelta(seconds=window_runs / per_second)
            query = RunQuery.model_validate(
                {**equalities, "start_time_from": stamp(low), "start_time_to": stamp(high)}
            )
            by_window = timed_ms(conn, *query_sql(query, by_start_time=True), repeat=2)
            walked = timed_ms(conn, *query_sql(query), repeat=2)
            label = "+".join(equalities) or "no equality"
            lines.append(
                f"  {label:12s} window of {window_runs:6d} runs, 30 days back:"
                f" read window + sort {by_window:8.2f} ms   walk {walked:8.2f} ms"
            )
    conn.close()
    return lines


def migration_cost(old: Path) -> float:
    """Seconds to build migration 4's indexes on an existing file (a copy)."""
    conn = sqlite3.connect(str(old), isolation_level=None)
    conn.execute("PRAGMA user_version = 3")
    started = time.perf_counter()
    migrate(conn)
    spent = time.perf_counter() - started
    conn.close()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sync", default="FULL,OFF", help="comma-separated levels")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    args = parser.parse_args()
    levels = [level.strip().upper() for level in args.sync.split(",")]
    print(f"index cost, {args.rows:,} rows, {args.runs} run(s), sqlite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        rates: dict[tuple[str, str], list[float]] = {}
        sizes: dict[str, list[int]] = {}
        for run in range(args.runs):
            for level in levels:
                order = ("old", "new") if run % 2 == 0 else ("new", "old")
                for index_set in order:
                    path = work / f"{index_set}-{level}.sqlite"
                    path.unlink(missing_ok=True)
                    loaded = load(path, index_set, level, args.rows)
                    rates.setdefault((index_set, level), []).append(loaded.rows_per_s)
                    sizes.setdefault(index_set, []).append(loaded.file_bytes)
                    print(
                        f"  run {run + 1} {level:4s} {index_set}: {loaded.rows_per_s:9,.0f} rows/s"
                        f"  {loaded.file_bytes / 2**20:8.1f} MiB",
                        flush=True,
                    )
        print("\ninsert rate (executemany, 500 rows per transaction, WAL), median of runs:")
        for level in levels:
            old = statistics.median(rates[("old", level)])
            new = statistics.median(rates[("new", level)])
            print(
                f"  synchronous={level:4s}: old {old:9,.0f} rows/s   new {new:9,.0f} rows/s"
                f"   new/old {new / old:6.1%}"
                f"   (runs old {[round(r) for r in rates[('old', level)]]},"
                f" new {[round(r) for r in rates[('new', level)]]})"
            )
        old_size, new_size = sizes["old"][-1], sizes["new"][-1]
        print(
            f"\nfile size at {args.rows:,} rows: old {old_size / 2**20:.1f} MiB"
            f" ({old_size / args.rows:.0f} B/run)   new {new_size / 2**20:.1f} MiB"
            f" ({new_size / args.rows:.0f} B/run)   new/old {new_size / old_size:.1%}"
        )
        old_path, new_path = work / f"old-{levels[0]}.sqlite", work / f"new-{levels[0]}.sqlite"
        print("\nlist query, limit 100, best of 3, after ANALYZE (old: planner's choice):")
        for line in read_latency(old_path, new_path):
            print(line, flush=True)
        print("\nstart_time window: read through the window vs walk (new index set):")
        for line in window_cutover(new_path, args.rows):
            print(line, flush=True)
        print(f"\nmigration 4 on the old file: {migration_cost(old_path):.2f} s")


if __name__ == "__main__":
    main()
