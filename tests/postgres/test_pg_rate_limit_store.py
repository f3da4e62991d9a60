"""The rate limit's shared store (``server.postgres.ratelimit``) on its own: replicas
racing over the same clients never deadlock nor lease more than the pool; a dead
replica stops counting; the tables and a replica's memory stay bounded."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from server.http.shared_ratelimit import WINDOW_S, SharedRateLimiter
from server.postgres.ratelimit import PostgresBudget, Report


@pytest.fixture
async def pool(pg_migrated_url: str) -> AsyncIterator[Any]:
    opened = await asyncpg.create_pool(pg_migrated_url, min_size=1, max_size=6)
    try:
        yield opened
    finally:
        await opened.close()


async def _held_and_pools(pool: Any) -> dict[bytes, float]:
    """Per client: its pool plus every lease held of it."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT p.client, p.tokens + coalesce((SELECT sum(held) FROM rate_limit_leases l"
            " WHERE l.client = p.client), 0) AS total FROM rate_limit_pools p"
        )
    return {bytes(row["client"]): row["total"] for row in rows}


async def test_replicas_racing_over_the_same_clients_never_deadlock_nor_overlease(
    pool: Any,
) -> None:
    """Three replicas exchange overlapping client sets, each in its own order, 40 times
    at once: no error, and a client's pool plus its leases never exceed rpm."""
    budget = PostgresBudget(pool)
    clients = [f"10.0.0.{n}".encode() for n in range(30)]
    rng = random.Random(5)

    async def replica(name: str) -> None:
        for _ in range(40):
            chosen = rng.sample(clients, 20)
            reports = [Report(c, rng.choice((0.0, -1.0)), rng.random() < 0.1) for c in chosen]
            live, grants = await budget.exchange(name, 60, WINDOW_S, reports)
            assert live >= 1
            assert {g.client for g in grants} == set(chosen)
            assert all(g.share >= 0 for g in grants)

    await asyncio.gather(*(replica(f"r{n}") for n in range(3)))
    totals = await _held_and_pools(pool)
    assert set(totals) == set(clients)
    assert all(total <= 60 + 1e-6 for total in totals.values()), totals


async def test_a_silent_replica_stops_sharing_a_client(pool: Any) -> None:
    """Two replicas serving one client split its pool; once one is silent for the
    window, the other leases all that is left."""
    budget = PostgresBudget(pool)
    client = b"198.51.100.7"
    _, (first,) = await budget.exchange("a", 60, WINDOW_S, [Report(client, 0.0, False)])
    assert (first.share, first.active) == (60.0, 1)
    _, (second,) = await budget.exchange("b", 60, WINDOW_S, [Report(client, 0.0, False)])
    assert second.active == 2
    assert second.share < 1.0  # "a" holds the whole pool
    _, (back,) = await budget.exchange("a", 60, WINDOW_S, [Report(client, 60.0, False)])
    assert back.active == 2
    assert 29.0 <= back.share <= 31.0  # half of the pool it gave back
    await asyncio.sleep(WINDOW_S + 0.2)
    _, (alone,) = await budget.exchange("b", 60, WINDOW_S, [Report(client, 0.0, False)])
    assert alone.active == 1
    assert 29.0 <= alone.share <= 32.0  # "a"'s lease is lost, the rest is "b"'s


async def test_release_gives_the_lease_back_and_the_sweep_deletes_full_pools(
    pool: Any,
) -> None:
    budget = PostgresBudget(pool)
    client = b"203.0.113.9"
    await budget.exchange("a", 6000, WINDOW_S, [Report(client, 0.0, False)])
    _, (released,) = await budget.exchange("a", 6000, WINDOW_S, [Report(client, 5990.0, True)])
    assert released.share == 0.0
    assert released.pool >= 5990.0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM rate_limit_leases") == 0
    await asyncio.sleep(0.1)  # 6000 rpm: full again within 0.1 s
    await budget.sweep(WINDOW_S)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM rate_limit_pools") == 0


async def test_a_replica_tracks_at_most_max_clients_and_settles_the_forgotten(
    pool: Any,
) -> None:
    """A flood of addresses: the replica remembers max_clients of them; the leases of
    the others are given back, so the database holds no more leases than that."""
    budget = PostgresBudget(pool)
    limiter = SharedRateLimiter(60, max_clients=5)
    runner = asyncio.create_task(_run_until_stopped(limiter, budget))
    try:
        for n in range(40):
            decision = await limiter.decide(f"2001:db8::{n:x}")
            assert decision.allowed
            assert len(limiter) <= 5
        for _ in range(50):  # the forgotten leases are settled within a few ticks
            await asyncio.sleep(0.05)
            async with pool.acquire() as conn:
                leases = await conn.fetchval("SELECT count(*) FROM rate_limit_leases")
            if leases <= 5:
                break
        assert leases <= 5
    finally:
        limiter.stop()
        await runner


async def _run_until_stopped(limiter: SharedRateLimiter, budget: PostgresBudget) -> None:
    await limiter.tick(budget)
    await limiter.run(budget)
