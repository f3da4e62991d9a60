"""``GET /api/v1/stats`` on PostgreSQL (one aggregate over the runs) against SQLite
(rollups kept by triggers), side by side in one process on the same fleet: the storage
facades' ``stats`` called directly, no HTTP.

    python bench/pg_stats_bench.py --url postgresql://user:pass@127.0.0.1:5432/db --rows 200000

The fleet: ``--rows`` runs over 30 UTC days, 2,000 agents, 8 job types, 90 % finished.
Per query shape the median of ``--repeat`` wall-clock reads is printed for both, and
their ratio. Wall-clock on a shared 2-core machine is noisy: compare the two columns
of one run. PostgreSQL's own CPU is another process's, so no CPU time is given. The
PostgreSQL tables are VACUUM ANALYZEd after the fill, as autovacuum would leave them.
Prints figures, asserts nothing (not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from server.contract.models import RunCreate
from server.contract.stats import StatsQuery
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.url import parse_url
from server.storage.database import Database, StorageSettings

DAYS = 30
BASE = datetime(2026, 3, 1, tzinfo=UTC)
LAST = BASE + timedelta(days=DAYS)
STATUSES = ["success"] * 7 + ["failure", "running", "timeout"]


def _fleet(rows: int) -> list[RunCreate]:
    rng = random.Random(7)
    runs = []
    for n in range(rows):
        start = BASE + timedelta(seconds=rng.randrange(DAYS * 86_400))
        status = rng.choice(STATUSES)
        runs.append(
            RunCreate.model_validate(
                {
                    "event_id": f"ev-{n}",
                    "run_id": f"run-{n}",
                    "agent_name": f"agent-{rng.randrange(2000)}",
                    "job_type": f"job-{rng.randrange(8)}",
                    "status": status,
                    "start_time": start.isoformat(),
                    "duration_ms": 0 if status == "running" else rng.randrange(1, 600_000),
                    "items_discovered": rng.randrange(100),
                }
            )
        )
    return runs


def _shapes() -> dict[str, dict[str, str]]:
    def window(days: int) -> dict[str, str]:
        return {
            "start_time_from": (LAST - timedelta(days=days, minutes=30)).isoformat(),
            "start_time_to": (LAST - timedelta(minutes=30)).isoformat(),
        }

    return {
        "job_type,day 7 days": {"group_by": "job_type,day", **window(7)},
        "job_type 30 days": {"group_by": "job_type", **window(30)},
        "status, no window": {"group_by": "status"},
        "agent_name 1 day": {"group_by": "agent_name", **window(1)},
        "hour 1 day": {"group_by": "hour", **window(1)},
    }


async def _median_ms(read: Callable[[], Awaitable[Any]], repeat: int) -> float:
    await read()  # warm
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        await read()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = _fleet(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = Database.open(StorageSettings(path=Path(tmp) / "bench.sqlite"))
        pg = await PostgresDatabase.open(PostgresSettings(url=parse_url(args.url)))
        try:
            async with pg.pool.acquire() as conn:
                await conn.execute("TRUNCATE agent_runs")
            for first in range(0, len(runs), 1000):
                chunk = runs[first : first + 1000]
                await sqlite.insert_batch(chunk)
                await pg.insert_batch(chunk)
            conn = await asyncpg.connect(args.url)
            try:
                await conn.execute("VACUUM ANALYZE agent_runs")
            finally:
                await conn.close()
            print(f"{args.rows:,} runs; median of {args.repeat} reads, wall ms")
            print(f"{'shape':<24} {'sqlite':>9} {'postgres':>9} {'ratio':>7}")
            for name, params in _shapes().items():
                query = StatsQuery.model_validate(params)
                expected = await sqlite.stats(query)
                assert await pg.stats(query) == expected, name
                lite = await _median_ms(lambda q=query: sqlite.stats(q), args.repeat)
                post = await _median_ms(lambda q=query: pg.stats(q), args.repeat)
                print(f"{name:<24} {lite:>9.1f} {post:>9.1f} {post / lite:>6.1f}x")
        finally:
            await sqlite.close()
            await pg.close()


if __name__ == "__main__":
    asyncio.run(main())
