"""Stale runs at scale: migration 6's cost, its write cost, and the reaper's reads.

    python bench/stale_bench.py --rows 1000000 --json out.json
    python bench/stale_bench.py --rows 100000

1. Builds a schema-5 database (the server before staleness) of ``--rows`` fleet-shaped
   runs (bench/server_bench.py ``history_rows``: 2,000 agents, Zipf, 85/8/3% statuses,
   90 days; the first 100,000 built by the server's own code, the rest copied by
   SQLite), then times ``migrate`` to schema 6 (a table rebuild: run_json answers two
   more columns): wall and CPU seconds, file size before and after.
2. Write cost, side by side on the two files (same rows, same disk, same moment):
   CPU per inserted run (batches of 100, one transaction each, WAL, synchronous=OFF
   so the disk does not hide the CPU) and per update of a running run.
3. The reaper on the migrated file: the first pass (the fleet's old ``running`` runs
   are overdue: 3% of the rows) in batches of 500, its longest batch (the writer's
   longest hold); then a pass with nothing stale (the probe) and a ``stale=true`` page.

Nothing here is a test; figures are for the closing note (no targets but the
writer-hold bound: a batch's CPU under 50 ms; its wall time on a shared disk is shown).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import Figure, format_row, write_json
from server_bench import HISTORY, PREFILL_BASE_ROWS, _shifted, history_rows, iso

from server.contract.models import RunCreate, RunQuery
from server.storage import runs, schema, stale
from server.storage.runs import _INSERT_COLUMNS, _INSERT_SQL, insert_params

_V5_INSERT_COLUMNS = [c for c in _INSERT_COLUMNS if c in schema._V5_COLUMNS]
_V5_INSERT_SQL = (
    f"INSERT INTO agent_runs ({', '.join(_V5_INSERT_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _V5_INSERT_COLUMNS)})"
)
_V5_KEEP = [_INSERT_COLUMNS.index(c) for c in _V5_INSERT_COLUMNS]


def v5_params(payloads: list[dict[str, Any]], now: str) -> list[tuple[Any, ...]]:
    rows = [insert_params(RunCreate.model_validate(p), now) for p in payloads]
    return [tuple(row[i] for i in _V5_KEEP) for row in rows]


def open_file(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    return conn


def build_v5(path: Path, rows: int, history_end: datetime) -> None:
    conn = open_file(path)
    for migration in schema.MIGRATIONS[:5]:
        conn.execute("BEGIN")
        for statement in migration.statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {migration.version}")
        conn.execute("COMMIT")
    base = min(rows, PREFILL_BASE_ROWS)
    now = iso(history_end)
    done = 0
    while done < base:
        n = min(20_000, base - done)
        payloads = list(history_rows(done, n, rows, history_end, seed=done))
        conn.execute("BEGIN")
        conn.executemany(_V5_INSERT_SQL, v5_params(payloads, now))
        conn.execute("COMMIT")
        done += n
    columns = [c for c in schema._V5_COLUMNS if c != "event_id"]
    instants = {"created_at", "start_time", "end_time", "updated_at"}
    slice_s = int((HISTORY * (base / rows)).total_seconds())
    for copy in range(1, math.ceil(rows / base)):
        n = min(base, rows - copy * base)
        select = ", ".join(
            _shifted(c, str(copy * slice_s)) if c in instants else c for c in columns
        )
        conn.execute("BEGIN")
        conn.execute(
            f"INSERT INTO agent_runs (event_id, {', '.join(columns)}) "
            f"SELECT substr(event_id, 1, 24) || printf('%012x', {copy} * 100000000 + id), "
            f"{select} FROM agent_runs WHERE id <= ?",
            (n,),
        )
        conn.execute("COMMIT")
        print(f"\r  building schema 5: {base + copy * base:,}/{rows:,}", end="", file=sys.stderr)
    print(file=sys.stderr)
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn's result, wall seconds, CPU seconds of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def insert_cpu_us(path: Path, sql: str, params: list[tuple[Any, ...]]) -> float:
    conn = open_file(path)
    started = time.process_time()
    for at in range(0, len(params), 100):
        conn.execute("BEGIN")
        conn.executemany(sql, params[at : at + 100])
        conn.execute("COMMIT")
    cpu = time.process_time() - started
    conn.close()
    return cpu / len(params) * 1e6


def update_cpu_us(path: Path, event_ids: list[str], touch_last_seen: bool) -> float:
    """A PATCH-like update of running runs, as each schema's server writes it."""
    conn = open_file(path)
    extra = (
        ", last_seen_at = max(COALESCE(last_seen_at, ''), ?), sidecar_id = NULL"
        if touch_last_seen
        else ""
    )
    now = iso(datetime.now(UTC))
    started = time.process_time()
    for at in range(0, len(event_ids), 100):
        conn.execute("BEGIN")
        for event_id in event_ids[at : at + 100]:
            params: tuple[Any, ...] = (
                (7, now, now, event_id) if touch_last_seen else (7, now, event_id)
            )
            conn.execute(
                f"UPDATE agent_runs SET items_succeeded = ?, updated_at = ?{extra} WHERE event_id = ?",
                params,
            )
        conn.execute("COMMIT")
    cpu = time.process_time() - started
    conn.close()
    return cpu / len(event_ids) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=5_000, help="runs inserted/updated per file")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    rows: int = args.rows
    figures: list[Figure] = []
    history_end = datetime.now(UTC)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="stale-bench-") as tmp:
        v5 = Path(tmp) / "v5.sqlite"
        build_v5(v5, rows, history_end)
        v6 = Path(tmp) / "v6.sqlite"
        shutil.copyfile(v5, v6)
        size5 = v5.stat().st_size
        conn = open_file(v6)
        applied, wall, cpu = timed(lambda: schema.migrate(conn))
        assert applied == [6], applied
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        size6 = v6.stat().st_size
        free_pages = sqlite3.connect(str(v6)).execute("PRAGMA freelist_count").fetchone()[0]
        scenario = "migration 5 -> 6 (table rebuild)"
        figures += [
            Figure(scenario, "wall s", wall, higher_is_better=False, rows=rows),
            Figure(scenario, "CPU s", cpu, higher_is_better=False, rows=rows),
            Figure(scenario, "file MB before", size5 / 1e6, higher_is_better=False, rows=rows),
            Figure(
                scenario,
                "file MB after",
                size6 / 1e6,
                higher_is_better=False,
                rows=rows,
                note=f"{free_pages * 4096 / 1e6:.0f} MB of it free pages (reused by later writes)",
            ),
        ]
        # ---- write cost, side by side
        now = iso(datetime.now(UTC))
        payloads = list(history_rows(rows, args.writes, rows * 2, history_end, seed=rows))
        for payload in payloads:
            payload["status"] = "running"
        full = [insert_params(RunCreate.model_validate(p), now) for p in payloads]
        insert5 = insert_cpu_us(v5, _V5_INSERT_SQL, [tuple(r[i] for i in _V5_KEEP) for r in full])
        insert6 = insert_cpu_us(v6, _INSERT_SQL, full)
        ids = [p["event_id"] for p in payloads]
        update5 = update_cpu_us(v5, ids, touch_last_seen=False)
        update6 = update_cpu_us(v6, ids, touch_last_seen=True)
        figures += [
            Figure(
                "insert a running run, schema 5",
                "CPU us/run",
                insert5,
                higher_is_better=False,
                rows=rows,
            ),
            Figure(
                "insert a running run, schema 6",
                "CPU us/run",
                insert6,
                higher_is_better=False,
                rows=rows,
                note=f"x{insert6 / insert5:.2f} of schema 5",
            ),
            Figure(
                "update a running run, schema 5",
                "CPU us/run",
                update5,
                higher_is_better=False,
                rows=rows,
            ),
            Figure(
                "update a running run (+last_seen_at), schema 6",
                "CPU us/run",
                update6,
                higher_is_better=False,
                rows=rows,
                note=f"x{update6 / update5:.2f} of schema 5",
            ),
        ]
        # ---- the reaper on the migrated file
        conn = open_file(v6)
        # The prefill stamps every row's updated_at with the prefill's own time, so the
        # migration made every last_seen_at "now"; a real fleet's running runs were last
        # written near their creation: say so, to give the reaper its real first pass.
        conn.execute("UPDATE agent_runs SET last_seen_at = created_at WHERE status = 'running'")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        policy = stale.StalePolicy()
        overdue = conn.execute(
            f"SELECT count(*) FROM ({stale.overdue_ids_sql(policy, datetime.now(UTC))[0]})",
            stale.overdue_ids_sql(policy, datetime.now(UTC))[1],
        ).fetchone()[0]
        longest = total = longest_cpu = 0.0
        batches = 0
        while True:
            reaped, wall, batch_cpu = timed(
                lambda: _in_transaction(
                    conn, lambda: stale.reap_batch(conn, policy, datetime.now(UTC))
                )
            )
            batches += 1
            total += wall
            longest = max(longest, wall)
            longest_cpu = max(longest_cpu, batch_cpu)
            if reaped < stale.REAP_BATCH:
                break
        _, probe, _ = timed(lambda: stale.any_reapable(conn, policy, datetime.now(UTC)))
        # a few overdue runs again, for a stale=true page
        conn.execute(
            "UPDATE agent_runs SET status = 'running', reaped_at = NULL WHERE id IN"
            " (SELECT id FROM agent_runs INDEXED BY idx_runs_reaped WHERE reaped_at IS NOT NULL LIMIT 50)"
        )
        page_query = RunQuery(stale="true", limit=100)
        _, page, _ = timed(
            lambda: runs.query_page_json(
                conn, page_query, None, stale.overdue_ids_sql(policy, datetime.now(UTC))
            )
        )
        conn.close()
        scenario = f"first reaper pass ({overdue:,} overdue runs, {batches} batches of <= {stale.REAP_BATCH})"
        figures += [
            Figure(
                scenario,
                "longest batch ms",
                longest * 1e3,
                higher_is_better=False,
                rows=rows,
            ),
            Figure(
                scenario,
                "longest batch CPU ms",
                longest_cpu * 1e3,
                target=50.0,
                higher_is_better=False,
                rows=rows,
            ),
            Figure(scenario, "total s", total, higher_is_better=False, rows=rows),
            Figure(
                "reaper pass, nothing stale (probe)",
                "ms",
                probe * 1e3,
                higher_is_better=False,
                rows=rows,
            ),
            Figure(
                "GET ?stale=true, 50 overdue, page 100 (SQL)",
                "ms",
                page * 1e3,
                higher_is_better=False,
                rows=rows,
            ),
        ]
    for figure in figures:
        print(format_row(figure))
    if args.json:
        write_json(args.json, figures, verified=True)
    return 0


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[], int]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        return fn()
    finally:
        conn.execute("COMMIT")


if __name__ == "__main__":
    sys.exit(main())
