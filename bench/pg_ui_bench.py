"""Dashboard pages on PostgreSQL against SQLite, side by side in one process on the same
fleet: the real app (``create_app``) on each backend, each page fetched over 127.0.0.1.

    python bench/pg_ui_bench.py --url postgresql://user:pass@127.0.0.1:5432/db --rows 200000

The fleet: ``--rows`` runs over the last 30 days (created as they started), 2,000 agents
(a few busy, most quiet), 20 job types, 85 % success, 8 % failure, 3 % running. Per page
shape the median of ``--repeat`` wall-clock fetches (after one warm-up) is printed for
both, and their ratio. Wall-clock on a shared 2-core machine is noisy: compare the two
columns of one run (PostgreSQL's CPU is another process's, so no CPU time is given).
Both apps answer the same page; the check that they show the same is
tests/postgres/test_pg_dashboard.py. Prints figures, asserts nothing (not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import ServerConfig
from server.contract.models import RunCreate
from server.http.runs import DATABASE

DAYS = 30
STATUSES = ["success"] * 85 + ["failure"] * 8 + ["running"] * 3 + ["timeout"] * 2
STATUSES += ["partial", "cancelled"]


def _fleet(rows: int, now: datetime) -> list[RunCreate]:
    rng = random.Random(7)
    runs = []
    for n in range(rows):
        start = now - timedelta(seconds=rng.randrange(DAYS * 86_400))
        status = rng.choice(STATUSES)
        agent = int(rng.paretovariate(1.2)) % 2000
        runs.append(
            RunCreate.model_validate(
                {
                    "event_id": f"ev-{n}",
                    "run_id": f"run-{n // 3}",
                    "agent_name": f"agent-{agent}",
                    "job_type": f"job-{(agent + rng.randrange(3)) % 20}",
                    "status": status,
                    "start_time": start.isoformat(),
                    "created_at": start.isoformat(),
                    "duration_ms": 0 if status == "running" else rng.randrange(1, 600_000),
                    "error_summary": "boom" if status == "failure" else None,
                }
            )
        )
    runs.sort(key=lambda run: str(run.start_time))
    return runs


SHAPES = {
    "overview 24h": "/ui/",
    "overview 7d": "/ui/?window=7d",
    "agents": "/ui/agents",
    "busiest agent": "/ui/agents/agent-1",
    "jobs": "/ui/jobs",
    "one job": "/ui/jobs/job-1",
    "runs (no filter)": "/ui/runs",
    "runs of an agent": "/ui/runs?agent_name=agent-1&limit=100",
    "runs stale=true": "/ui/runs?stale=true",
    "a run": "/ui/runs/" + quote("ev-1000", safe=""),
}


async def _median_ms(client: TestClient[Any, Any], path: str, repeat: int) -> float:
    times = []
    for attempt in range(repeat + 1):
        began = time.perf_counter()
        async with client.get(path, headers={"Accept": "text/html"}) as response:
            await response.read()
            if response.status != 200:
                raise SystemExit(f"{path}: {response.status}")
        if attempt:  # the first is the warm-up
            times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = _fleet(args.rows, datetime.now(UTC))
    with tempfile.TemporaryDirectory() as tmp:
        common: dict[str, Any] = {"reaper_interval_s": 86_400, "db_path": Path(tmp) / "b.sqlite"}
        clients = {
            "sqlite": TestClient(TestServer(create_app(ServerConfig(**common)), host="127.0.0.1")),
            "postgres": TestClient(
                TestServer(
                    create_app(ServerConfig(**common, database_url=args.url)), host="127.0.0.1"
                )
            ),
        }
        for client in clients.values():
            await client.start_server()
        try:
            conn = await asyncpg.connect(args.url)
            try:  # the database's runs are the bench's (as bench/pg_stats_bench.py)
                await conn.execute("TRUNCATE agent_runs, run_agent_names, run_job_types")
            finally:
                await conn.close()
            for client in clients.values():
                database = client.app[DATABASE]
                for first in range(0, len(runs), 1000):
                    await database.insert_batch(runs[first : first + 1000])
            conn = await asyncpg.connect(args.url)
            try:
                await conn.execute("VACUUM ANALYZE agent_runs")
            finally:
                await conn.close()
            print(f"{args.rows:,} runs; median of {args.repeat} fetches, wall ms")
            print(f"{'page':<20} {'sqlite':>9} {'postgres':>9} {'ratio':>7}")
            for name, path in SHAPES.items():
                lite = await _median_ms(clients["sqlite"], path, args.repeat)
                post = await _median_ms(clients["postgres"], path, args.repeat)
                print(f"{name:<20} {lite:>9.1f} {post:>9.1f} {post / lite:>6.1f}x")
        finally:
            for client in clients.values():
                await client.close()


if __name__ == "__main__":
    asyncio.run(main())
