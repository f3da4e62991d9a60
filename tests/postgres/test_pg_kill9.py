"""``kill -9`` of PostgreSQL in the middle of writes loses nothing acknowledged and
leaves no batch half applied (a cluster of its own: this test kills it)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator

import pg_cluster
import pytest

from server.contract.models import RunCreate, UpsertItem
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.url import parse_url

ROUNDS = 3


@pytest.fixture
def own_cluster() -> Iterator[pg_cluster.Cluster]:
    cluster = pg_cluster.Cluster.start(pg_cluster.require_postgres())
    try:
        yield cluster
    finally:
        cluster.destroy()


def _run(event_id: str) -> RunCreate:
    return RunCreate.model_validate(
        {
            "event_id": event_id,
            "run_id": f"run-{event_id}",
            "agent_name": "agent",
            "job_type": "job",
            "start_time": "2026-03-01T11:00:00Z",
        }
    )


class Ledger:
    """What the writers were told: acknowledged operations, and those in flight when
    the server died (either outcome is allowed for those, but all or nothing)."""

    def __init__(self) -> None:
        self.created: set[str] = set()
        self.batches: list[list[str]] = []
        self.finished: set[str] = set()
        self.unsure_batches: list[list[str]] = []
        self.failures: set[str] = set()


async def _writer(db: PostgresDatabase, ledger: Ledger, name: str, rng: random.Random) -> None:
    for n in range(1_000_000):
        kind = rng.random()
        ids = [f"{name}-{n}-{k}" for k in range(1 if kind < 0.4 else 20)]
        try:
            if kind < 0.4:
                if await db.create(_run(ids[0])):
                    ledger.created.add(ids[0])
            elif kind < 0.7:
                await db.insert_batch([_run(e) for e in ids])
                ledger.batches.append(ids)
            else:
                done = sorted(ledger.created)[-5:]
                items = [UpsertItem(event_id=e, create=_run(e)) for e in ids] + [
                    UpsertItem.model_validate({"event_id": e, "update": {"status": "success"}})
                    for e in done
                ]
                await db.upsert_batch(items)
                ledger.batches.append(ids)
                ledger.finished.update(done)
        except Exception as exc:  # the server died under this operation: outcome unknown
            ledger.failures.add(type(exc).__name__)
            if len(ids) > 1:
                ledger.unsure_batches.append(ids)
            return


@pytest.mark.slow
async def test_kill9_mid_transaction_loses_nothing_committed(
    own_cluster: pg_cluster.Cluster,
) -> None:
    name = own_cluster.new_database("kill")
    url = parse_url(own_cluster.url(name))
    settings = PostgresSettings(url=url, pool_size=6, command_timeout_s=20)
    ledger = Ledger()
    rng = random.Random(2026)
    for round_ in range(ROUNDS):
        db = await PostgresDatabase.open(settings)
        try:
            writers = [
                asyncio.ensure_future(_writer(db, ledger, f"w{round_}.{k}", random.Random(k)))
                for k in range(6)
            ]
            # Some writes acknowledged in this round (bounded: a loaded disk is slow),
            # then a random moment more: the kill lands among writes in flight.
            start = len(ledger.created) + len(ledger.batches)
            for _ in range(600):
                if len(ledger.created) + len(ledger.batches) >= start + 10:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("no writes acknowledged within 30 s")
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            own_cluster.kill9()
            await asyncio.wait_for(asyncio.gather(*writers), 60)
        finally:
            with contextlib.suppress(Exception):
                await db.close(timeout_s=2)
        own_cluster.restart()

    db = await PostgresDatabase.open(settings)
    try:
        async with db.pool.acquire() as conn:
            rows = await conn.fetch("SELECT event_id, status FROM agent_runs")
    finally:
        await db.close()
    stored = {event_id: status for event_id, status in rows}
    assert ledger.created <= set(stored)
    for batch in ledger.batches:
        assert set(batch) <= set(stored), "an acknowledged batch lost runs"
    for batch in ledger.unsure_batches:
        present = [event_id in stored for event_id in batch]
        assert all(present) or not any(present), "a batch was half applied"
    assert all(stored[event_id] == "success" for event_id in ledger.finished)
    assert len(ledger.created) + len(ledger.batches) > ROUNDS
    # what the HTTP layer answers with 503 + Retry-After, never a driver error (a 500)
    assert ledger.failures == {"StorageUnavailable"}
