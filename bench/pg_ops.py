"""The run operations on PostgreSQL against SQLite, side by side in one process (issue 13's
first figures, before the app serves PostgreSQL): the storage facades called directly,
no HTTP.

    python bench/pg_ops.py --url postgresql://user:pass@127.0.0.1:5432/db
    python bench/pg_ops.py --url ... --batches 50 --rounds 3

Prints figures, asserts nothing (not a test). Each round runs every step on SQLite
(``Database``, WAL, synchronous=FULL) then on PostgreSQL (``PostgresDatabase``, the
server's own settings: run it with fsync and synchronous_commit on), each on empty
tables, so drift on a shared machine hits both alike; the median round is printed.
Steps, one client task after another (no concurrency: per-operation cost, not peak):

1. batch ingest: ``insert_batch`` of 100 new runs, ``--batches`` times; runs/s.
2. upsert: ``upsert_batch`` of 100 items (create + a terminal update each); items/s.
3. lifecycle: ``create`` then ``update`` (PATCH to success), ``--singles`` runs; ops/s.
4. list: ``query_json`` of the newest 100 with ``agent_name`` + ``status``; ms per page.

Wall-clock on a shared 2-core machine: noisy; compare the two columns of one run.
PostgreSQL's server CPU is another process's, so no CPU time is given.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from server.contract.models import RunCreate, RunQuery, UpsertItem
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.url import parse_url
from server.storage.database import Database, StorageSettings

AGENTS = [f"agent-{n}" for n in range(20)]


def _run(n: int) -> RunCreate:
    event_id = str(uuid.uuid4())
    return RunCreate.model_validate(
        {
            "event_id": event_id,
            "run_id": f"run-{event_id[:8]}",
            "agent_name": AGENTS[n % len(AGENTS)],
            "job_type": f"job-{n % 7}",
            "start_time": "2026-03-01T11:00:00Z",
            "product": "bench",
            "git_repo": "https://github.com/o/r.git",
            "git_commit_hash": "abcdef1234",
            "metrics_json": {"items": n, "phase": "ingest"},
        }
    )


async def _timed(step: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await step()
    return time.perf_counter() - start


async def _steps(db: Any, batches: int, singles: int) -> dict[str, float]:
    async def ingest() -> None:
        for b in range(batches):
            await db.insert_batch([_run(b * 100 + n) for n in range(100)])

    async def upsert() -> None:
        for b in range(batches):
            items = []
            for n in range(100):
                run = _run(b * 100 + n)
                items.append(
                    UpsertItem.model_validate(
                        {
                            "event_id": run.event_id,
                            "create": run.model_dump(exclude_unset=True),
                            "update": {"status": "success", "items_succeeded": n},
                        }
                    )
                )
            await db.upsert_batch(items)

    async def lifecycle() -> None:
        for n in range(singles):
            run = _run(n)
            await db.create(run)
            await db.update(run.event_id, {"status": "success", "duration_ms": n})

    pages: list[float] = []

    async def lists() -> None:
        query = RunQuery(agent_name=AGENTS[3], status="success", limit=100)
        for _ in range(50):
            start = time.perf_counter()
            await db.query_json(query)
            pages.append(time.perf_counter() - start)

    ingest_s = await _timed(ingest)
    upsert_s = await _timed(upsert)
    lifecycle_s = await _timed(lifecycle)
    await lists()
    return {
        "batch ingest runs/s": batches * 100 / ingest_s,
        "upsert items/s": batches * 100 / upsert_s,
        "create+PATCH ops/s": 2 * singles / lifecycle_s,
        "list page ms (p50)": statistics.median(pages) * 1000,
    }


async def _sqlite_round(batches: int, singles: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.open(StorageSettings(path=Path(tmp) / "bench.sqlite"))
        try:
            return await _steps(db, batches, singles)
        finally:
            await db.close()


async def _postgres_round(url: str, batches: int, singles: int) -> dict[str, float]:
    db = await PostgresDatabase.open(PostgresSettings(url=parse_url(url)))
    try:
        async with db.pool.acquire() as conn:
            await conn.execute("TRUNCATE agent_runs, sidecars")
        return await _steps(db, batches, singles)
    finally:
        await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="a PostgreSQL database to use (emptied)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    for _ in range(args.rounds):
        results["sqlite"].append(await _sqlite_round(args.batches, args.singles))
        results["postgresql"].append(await _postgres_round(args.url, args.batches, args.singles))
    print(
        f"{'median of ' + str(args.rounds) + ' rounds':28} {'SQLite':>10} {'PostgreSQL':>11} {'PG/SQLite':>9}"
    )
    for key in results["sqlite"][0]:
        sqlite = statistics.median(r[key] for r in results["sqlite"])
        postgres = statistics.median(r[key] for r in results["postgresql"])
        print(f"{key:28} {sqlite:10.1f} {postgres:11.1f} {postgres / sqlite:9.2f}")


if __name__ == "__main__":
    asyncio.run(main())
