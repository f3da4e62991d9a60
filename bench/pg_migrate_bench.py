"""``telemetry-server migrate`` of a skewed fleet's SQLite file into a real PostgreSQL.

    python bench/pg_migrate_bench.py                      # 1M runs, own throwaway cluster
    python bench/pg_migrate_bench.py --rows 200000 --url postgresql://u:p@127.0.0.1/db
    python bench/pg_migrate_bench.py --db /tmp/fleet.sqlite  # reuse a file made before

The fleet is ``bench/index_cost.py``'s (2,000 agents by Zipf-like popularity, 20 job
types, 85% success / 8% failure / 3% running / rest spread, 90 days, ~600 B of fields
per run), written straight through the server's schema and insert statement. The
migrate is the real command (``python -m server migrate``, a subprocess) into an empty
database, timed from start to exit (copy + verification), with its own CPU time and
the phases it reports. Without ``--url`` a throwaway cluster is started with
``tests/pg_cluster.py`` (as the tests do; fsync on) and destroyed at the end. The
target for the issue: 1M runs in at most 5 minutes. Wall-clock on a shared 2-core
machine is noisy (PostgreSQL, SQLite reads and digests compete for the 2 cores);
prints figures, asserts nothing (not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from index_cost import load

ROOT = Path(__file__).resolve().parent.parent

TARGET_S = 300.0


def build(path: Path, rows: int) -> float:
    started = time.perf_counter()
    load(path, "new", "OFF", rows)
    return time.perf_counter() - started


def migrate(source: Path, url: str, batch_rows: int) -> tuple[float, float, dict[str, object]]:
    """Wall seconds, CPU seconds of the migrate process, and its summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env["PYTHONPATH"] = str(ROOT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "migrate",
            "--from",
            f"sqlite:{source}",
            "--to",
            url,
            "--batch-rows",
            str(batch_rows),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise SystemExit(f"migrate failed ({result.returncode}): {result.stderr[-2000:]}")
    return wall, cpu, dict(orjson.loads(result.stdout.strip().splitlines()[-1]))


async def _count(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT count(*), count(DISTINCT event_id) FROM agent_runs")
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--url", help="an empty PostgreSQL database (default: own cluster)")
    parser.add_argument("--db", type=Path, help="the SQLite file (made if absent)")
    parser.add_argument("--batch-rows", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pg-migrate-bench-") as tmp:
        source = args.db or Path(tmp) / "fleet.sqlite"
        if not source.exists():
            print(f"building {args.rows:,} runs into {source} ...", flush=True)
            print(f"  built in {build(source, args.rows):.1f} s", flush=True)
        print(f"source: {source.stat().st_size / 1e9:.2f} GB", flush=True)
        cluster = None
        url = args.url
        if url is None:
            import pg_cluster

            found = pg_cluster.bin_dir()
            if found is None:
                raise SystemExit("no PostgreSQL binaries: give --url or apt-get install postgresql")
            cluster = pg_cluster.Cluster.start(found)
            url = cluster.url(cluster.new_database("bench"))
        try:
            wall, cpu, summary = migrate(source, url, args.batch_rows)
            rows, distinct = asyncio.run(_count(url))
        finally:
            if cluster is not None:
                cluster.destroy()
    runs = int(str(summary["source_runs"]))
    print(f"migrate: {runs:,} runs, {summary['agents']} agents, verified={summary['verified']}")
    print(
        f"  wall {wall:.1f} s ({runs / wall:,.0f} runs/s; target <= {TARGET_S:.0f} s:"
        f" {'met' if wall <= TARGET_S else 'MISSED'})"
    )
    print(f"  copy {summary['copy_seconds']} s, verify {summary['verify_seconds']} s (as reported)")
    print(f"  migrate process CPU {cpu:.1f} s (PostgreSQL's own CPU not included)")
    print(f"  target rows {rows:,}, distinct event_ids {distinct:,}")


if __name__ == "__main__":
    main()
