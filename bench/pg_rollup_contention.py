"""What a rollup table kept by a trigger (SQLite's design) would cost on PostgreSQL with
replicas writing at once: the reason ``server.postgres.stats`` reads the runs instead.

    python bench/pg_rollup_contention.py --url postgresql://user:pass@127.0.0.1:5432/db

Three ``PostgresDatabase`` instances (three replicas' pools, one process) each write
``--batches`` batches of 100 new finished runs at once, every run in one hot cell (one
UTC day, one job type, one status: a fleet's busy day). Measured three ways, side by
side on the same database: no trigger (as served); a trigger adding each run to one
cell row (``INSERT ... ON CONFLICT DO UPDATE``: every writer queues on that row's lock
until the writer before it commits); the same trigger with the cell sharded by
backend pid (per-connection cells, summed at read: no shared row). Prints runs/s and
failed batches (a deadlock would be one). Wall-clock on a shared machine: compare the
columns of one run. Asserts nothing. Leaves the tables it made dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
import uuid

import asyncpg

from server.contract.models import RunCreate
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.url import parse_url

_CELL = """
CREATE TABLE bench_cells (day text, job_type text, status text, shard int,
    runs bigint NOT NULL, items bigint NOT NULL, PRIMARY KEY (day, job_type, status, shard));
CREATE FUNCTION bench_cell() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_cells VALUES (substr(NEW.start_time, 1, 10), NEW.job_type, NEW.status,
        {shard}, 1, NEW.items_discovered)
    ON CONFLICT (day, job_type, status, shard) DO UPDATE
    SET runs = bench_cells.runs + 1, items = bench_cells.items + EXCLUDED.items;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_cell AFTER INSERT ON agent_runs FOR EACH ROW EXECUTE FUNCTION bench_cell();
"""
_DROP = (
    "DROP TRIGGER IF EXISTS bench_cell ON agent_runs; DROP FUNCTION IF EXISTS bench_cell();"
    " DROP TABLE IF EXISTS bench_cells"
)
_IDS = itertools.count()


def _batch() -> list[RunCreate]:
    return [
        RunCreate.model_validate(
            {
                "event_id": str(uuid.uuid4()),
                "run_id": f"run-{next(_IDS)}",
                "agent_name": "agent",
                "job_type": "hot",
                "status": "success",
                "start_time": "2026-03-01T11:00:00Z",
                "items_discovered": 3,
            }
        )
        for _ in range(100)
    ]


async def _round(replicas: list[PostgresDatabase], batches: int) -> tuple[float, int]:
    failed = 0

    async def write(db: PostgresDatabase) -> None:
        nonlocal failed
        for _ in range(batches):
            try:
                await db.insert_batch(_batch())
            except Exception:
                failed += 1

    began = time.perf_counter()
    await asyncio.gather(*(write(db) for db in replicas for _ in range(4)))
    elapsed = time.perf_counter() - began
    return len(replicas) * 4 * batches * 100 / elapsed, failed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = PostgresSettings(url=parse_url(args.url), pool_size=4)
    replicas = [await PostgresDatabase.open(settings) for _ in range(3)]
    conn = await asyncpg.connect(args.url)
    designs = {
        "no trigger (served)": None,
        "one cell row": _CELL.format(shard="0"),
        "cell per backend": _CELL.format(shard="pg_backend_pid()"),
    }
    found: dict[str, list[tuple[float, int]]] = {name: [] for name in designs}
    try:
        for _ in range(args.rounds):
            for name, ddl in designs.items():
                await conn.execute(_DROP)
                await conn.execute("TRUNCATE agent_runs")
                if ddl:
                    await conn.execute(ddl)
                found[name].append(await _round(replicas, args.batches))
        print("3 replicas x 4 writers, batches of 100 runs into one hot cell; median round")
        for name, rounds in found.items():
            rate = statistics.median(r for r, _ in rounds)
            print(f"{name:<22} {rate:>8.0f} runs/s  failed batches {sum(f for _, f in rounds)}")
    finally:
        await conn.execute(_DROP)
        await conn.close()
        for db in replicas:
            await db.close()


if __name__ == "__main__":
    asyncio.run(main())
