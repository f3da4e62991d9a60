"""The shared rate limit with its store gone (PostgreSQL killed): it fails open to a
bucket per replica, so no request is refused because the store is down and none
answers 500; once PostgreSQL is back the replicas share one budget again (a cluster of
its own: this test kills it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pg_cluster
import pytest
from rate_traffic import budget, drive

from server.http.middleware import RATE_LIMITER
from server.http.shared_ratelimit import SharedRateLimiter

RPM = 30


@pytest.fixture
def own_cluster() -> Iterator[pg_cluster.Cluster]:
    cluster = pg_cluster.Cluster.start(pg_cluster.require_postgres())
    try:
        yield cluster
    finally:
        cluster.destroy()


def _limiter(api: Any) -> SharedRateLimiter:
    limiter = api.client.server.app[RATE_LIMITER]
    assert isinstance(limiter, SharedRateLimiter)
    return limiter


async def _until(condition: Any, bound_s: float) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {bound_s} s"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_the_store_down_fails_open_per_replica_then_shares_again(
    make_api: Any, own_cluster: pg_cluster.Cluster
) -> None:
    url = own_cluster.url(own_cluster.new_database("ratelimit"))
    apis = [
        await make_api.sqlite(database_url=url, rate_limit_enabled=True, rate_limit_rpm=RPM)
        for _ in range(2)
    ]
    urls = [str(api.client.make_url("")).rstrip("/") for api in apis]
    limiters = [_limiter(api) for api in apis]
    assert all(limiter.shared for limiter in limiters)
    spent = await drive(urls, lambda n: n % 2, 1.0, workers=2)
    assert spent.refused > 0
    assert abs(spent.allowed - budget(RPM, spent.elapsed_s)) <= 0.2 * RPM

    own_cluster.kill9()
    await _until(lambda: not any(limiter.shared for limiter in limiters), 5.0)
    for api in apis:
        statuses = [(await api.request("GET", "/api/v1/metadata")).status for _ in range(RPM)]
        assert set(statuses) <= {200, 503}, statuses  # never 429 for the store, never 500
        assert (await api.request("GET", "/api/v1/runs")).status == 429  # its own bucket
    assert all(limiter.failures > 0 for limiter in limiters)

    own_cluster.restart()
    await _until(lambda: all(limiter.shared for limiter in limiters), 30.0)
    # A crash empties the UNLOGGED pools: every budget starts full again.
    again = await drive(urls, lambda n: n % 2, 1.5, workers=2)
    assert again.refused > 0
    assert abs(again.allowed - budget(RPM, again.elapsed_s)) <= 0.2 * RPM, again
