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
4. start_time windows (``server.storage.window``): windows of W runs ending
   0, 1 or 30 days back, as the server reads them (prompt runs through the list
   index within the window's created_at range, late runs through their partial index).
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
from server.contract.run_record import RUN_COLUMNS
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
#: The rejected alternative, for the record: one index per combination of equality
#: filters (eight), each ending in the list order, so no query needs a merge.
ALL_EIGHT = (
    "CREATE INDEX idx_runs_agent_job_created ON agent_runs(agent_name, job_type, created_at, id)",
    "CREATE INDEX idx_runs_agent_status_created ON agent_runs(agent_name, status, created_at, id)",
    "CREATE INDEX idx_runs_job_status_created ON agent_runs(job_type, status, created_at, id)",
    "CREATE INDEX idx_runs_agent_job_status_created"
    " ON agent_runs(agent_name, job_type, status, created_at, id)",
)
INDEX_SETS = ("old", "new", "eight", "v5")
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


def fleet_rows(
    total: int, seed: int = 10, late_share: float = 0.01
) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of BATCH rows, oldest first, with the fleet's skew; ``late_share`` of the
    runs recorded 1-7 days after they started (a sidecar's backlog, a back-fill)."""
    rng = random.Random(seed)
    pool = templates(rng)
    step = HISTORY / total
    origin = END - HISTORY
    batch: list[tuple[Any, ...]] = []
    for i in range(total):
        created = origin + step * i
        start = created - timedelta(seconds=rng.randrange(60))
        if rng.random() < late_share:
            start -= timedelta(days=rng.randrange(1, 8))
        row = list(pool[i % len(pool)])
        agent = rng.choices(AGENTS, cum_weights=AGENT_CUM)[0]
        row[_AT["event_id"]] = f"{rng.getrandbits(128):032x}"  # as random as a uuid4
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


def migrate_to(conn: sqlite3.Connection, version: int) -> None:
    """The schema as a server of that version left it."""
    for migration in MIGRATIONS[:version]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version:d}")


def open_db(path: Path, index_set: str, synchronous: str, cache_mib: int = 0) -> sqlite3.Connection:
    """old: before migration 4; new: this server's; eight: old plus ALL_EIGHT's four;
    v5: before migration 6 (a full start_time index instead of the late runs' partial ones).
    cache_mib 0 keeps SQLite's default page cache (2 MiB); the server's writer has 64 MiB
    (``server.storage.connection.WRITER_CACHE_KIB``)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    if cache_mib:
        conn.execute(f"PRAGMA cache_size = {-1024 * cache_mib:d}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    if index_set == "new":
        migrate(conn)
    elif index_set == "v5":
        migrate_to(conn, 5)
    else:
        migrate_to(conn, 3)
    if index_set == "eight":
        for statement in ALL_EIGHT:
            conn.execute(statement)
    return conn


@dataclass
class Loaded:
    rows_per_s: float
    file_bytes: int


def load(
    path: Path,
    index_set: str,
    synchronous: str,
    rows: int,
    cache_mib: int = 0,
    late_share: float = 0.01,
) -> Loaded:
    """Insert rows in batches of BATCH, one transaction each (the insert rate's timing
    excludes building the rows)."""
    conn = open_db(path, index_set, synchronous, cache_mib)
    spent = 0.0
    for batch in fleet_rows(rows, late_share=late_share):
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
    clauses, params = [], []
    for column, value in (
        ("agent_name", query.agent_name),
        ("job_type", query.job_type),
        ("status", query.status),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        f"SELECT {', '.join(RUN_COLUMNS)}, id FROM agent_runs{where}"
        " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
    )
    return sql, [*params, query.limit + 1, query.offset]


def timed_ms(conn: sqlite3.Connection, sql: str, params: list[Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        conn.execute(sql, params).fetchall()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def reader(path: Path, *, analyze: bool = True) -> sqlite3.Connection:
    """After ANALYZE with the server's analysis_limit, as a server starts; or with no
    statistics for the table, as a server that started on the empty file and grew."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    if analyze:
        conn.execute("PRAGMA analysis_limit = 1000")
        conn.execute("ANALYZE")
    else:
        has_stats = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).fetchone()[0]
        if has_stats:
            conn.execute("DELETE FROM sqlite_stat1 WHERE tbl = 'agent_runs'")
        conn.close()
        conn = sqlite3.connect(str(path), isolation_level=None)
    return conn


RANKS = (0, 10, 200, 1500)  # agents by popularity: the busiest, busy, median, quiet
QUERIES: list[tuple[str, Callable[[str], RunQuery]]] = [
    ("agent+status=success", lambda a: RunQuery(agent_name=a, status="success")),
    ("agent", lambda a: RunQuery(agent_name=a)),
    ("agent+status=failure", lambda a: RunQuery(agent_name=a, status="failure")),
    ("agent+job", lambda a: RunQuery(agent_name=a, job_type=JOBS[3])),
    ("job+status=failure", lambda a: RunQuery(job_type=JOBS[3], status="failure")),
    (
        "agent+job+status",
        lambda a: RunQuery(agent_name=a, job_type=JOBS[3], status="success"),
    ),
]


def read_latency(old: Path, new: Path) -> list[str]:
    """Old SQL on the old file, with the statistics of a server that started on the
    empty file and grew, then after ANALYZE; new SQL on the new file after ANALYZE (its
    plans do not depend on statistics)."""
    lines = []
    old_plain = reader(old, analyze=False)
    old_ms = {
        (name, rank): timed_ms(old_plain, *old_sql(make(AGENTS[rank])))
        for name, make in QUERIES
        for rank in RANKS
    }
    old_plain.close()
    old_conn, new_conn = reader(old), reader(new)
    for name, make in QUERIES:
        for rank in RANKS:
            query = make(AGENTS[rank])
            analyzed_ms = timed_ms(old_conn, *old_sql(query))
            new_ms = timed_ms(new_conn, *query_sql(query))
            lines.append(
                f"  {name:22s} agent rank {rank:4d}: old {old_ms[(name, rank)]:8.2f} ms"
                f" (no stats) {analyzed_ms:8.2f} ms (ANALYZE)   new {new_ms:6.2f} ms"
            )
    old_conn.close()
    new_conn.close()
    return lines


def window_cutover(new: Path, rows: int) -> list[str]:
    """start_time windows of W runs ending D days back, as the server reads them."""
    conn = reader(new)
    lines = []
    per_second = rows / HISTORY.total_seconds()
    for equalities in ({}, {"status": "success"}, {"agent_name": AGENTS[0]}):
        for days_back in (0, 1, 30):
            high = END - timedelta(days=days_back)
            cells = []
            for window_runs in (100, 1000, 5000, 50000):
                low = high - timedelta(seconds=window_runs / per_second)
                query = RunQuery.model_validate(
                    {**equalities, "start_time_from": stamp(low), "start_time_to": stamp(high)}
                )
                cells.append(f"{window_runs:6d} runs {timed_ms(conn, *query_sql(query)):7.2f} ms")
            label = "+".join(equalities) or "no equality"
            lines.append(f"  {label:11s} ending {days_back:2d} d back:  " + "  ".join(cells))
    conn.close()
    return lines


def migration_cost(old: Path) -> float:
    """Seconds an upgrading server spends in migration 4 (on the old file, last)."""
    conn = sqlite3.connect(str(old), isolation_level=None)
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
    parser.add_argument("--sets", default=",".join(INDEX_SETS), help="of: old,new,eight,v5")
    parser.add_argument(
        "--cache-mib", type=int, default=0, help="writer page cache (default: SQLite's 2 MiB)"
    )
    parser.add_argument("--inserts-only", action="store_true", help="skip the read figures")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    args = parser.parse_args()
    levels = [level.strip().upper() for level in args.sync.split(",")]
    sets = [name.strip() for name in args.sets.split(",")]
    print(
        f"index cost, {args.rows:,} rows, {args.runs} run(s), sqlite {sqlite3.sqlite_version},"
        f" writer cache {f'{args.cache_mib} MiB' if args.cache_mib else 'default'}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        rates: dict[tuple[str, str], list[float]] = {}
        sizes: dict[str, int] = {}
        for run in range(args.runs):
            for level in levels:
                shift = run % len(sets)  # rotate the order: drift hits every set alike
                for index_set in sets[shift:] + sets[:shift]:
                    path = work / f"{index_set}-{level}.sqlite"
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{path}{suffix}").unlink(missing_ok=True)
                    loaded = load(path, index_set, level, args.rows, args.cache_mib)
                    rates.setdefault((index_set, level), []).append(loaded.rows_per_s)
                    sizes[index_set] = loaded.file_bytes
                    print(
                        f"  run {run + 1} {level:4s} {index_set:5s}: {loaded.rows_per_s:9,.0f}"
                        f" rows/s  {loaded.file_bytes / 2**20:8.1f} MiB",
                        flush=True,
                    )
        print("\ninsert rate (executemany, 500 rows per transaction, WAL), median of runs:")
        for level in levels:
            base = statistics.median(rates[(sets[0], level)])
            for index_set in sets:
                runs = rates[(index_set, level)]
                median = statistics.median(runs)
                print(
                    f"  synchronous={level:4s} {index_set:5s}: {median:9,.0f} rows/s"
                    f"  ({median / base:6.1%} of {sets[0]})   runs {[round(r) for r in runs]}"
                )
        print(f"\nfile size at {args.rows:,} rows (WAL checkpointed):")
        for index_set in sets:
            size = sizes[index_set]
            print(
                f"  {index_set:5s}: {size / 2**20:8.1f} MiB  {size / args.rows:5.0f} B/run"
                f"  ({size / sizes[sets[0]]:6.1%} of {sets[0]})"
            )
        if "old" in sets and "new" in sets and not args.inserts_only:
            old_path, new_path = work / f"old-{levels[0]}.sqlite", work / f"new-{levels[0]}.sqlite"
            print("\nlist query, limit 100, best of 3 (old: the planner's choice):")
            for line in read_latency(old_path, new_path):
                print(line, flush=True)
            print("\nstart_time windows, limit 100, best of 3 (new index set; * = chosen):")
            for line in window_cutover(new_path, args.rows):
                print(line, flush=True)
            print(f"\nmigration 4 on the old file: {migration_cost(old_path):.2f} s")


if __name__ == "__main__":
    main()
