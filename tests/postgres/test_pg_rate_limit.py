"""The rate limit across replicas: three servers on one PostgreSQL database give a
client about ``rpm`` requests a minute in total (within 20 %), however the load
balancer spreads them; each client has its own budget; refusals carry the guide's
headers; a forged X-Forwarded-For changes nothing."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from rate_traffic import Tally, budget, drive

from server.http.middleware import RATE_LIMITER
from server.http.runs import DATABASE
from server.http.shared_ratelimit import TICK_S, SharedRateLimiter
from server.postgres.database import PostgresDatabase

#: High enough that a test of a few seconds spends the burst and sees the refill.
RPM = 300
DURATION_S = 2.0
TOLERANCE = 0.2

_SKEW = random.Random(13)
PATTERNS = {
    "round_robin": lambda n: n % 3,
    "all_to_one": lambda n: 0,
    "skewed_70_20_10": lambda n: _SKEW.choices((0, 1, 2), (7, 2, 1))[0],
}


async def _replicas(make_api: Any, count: int = 3, rpm: int = RPM) -> list[Any]:
    apis = [await make_api(rate_limit_enabled=True, rate_limit_rpm=rpm) for _ in range(count)]
    return apis


def _urls(apis: list[Any]) -> list[str]:
    return [str(api.client.make_url("")).rstrip("/") for api in apis]


def _assert_within_budget(tally: Tally, rpm: int = RPM) -> None:
    expected = budget(rpm, tally.elapsed_s)
    assert tally.sent > (1 + TOLERANCE) * expected, f"too slow a client to tell: {tally}"
    assert abs(tally.allowed - expected) <= TOLERANCE * expected, (tally, expected)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
async def test_three_replicas_hold_one_budget_however_requests_are_spread(
    make_api: Any, pattern: str
) -> None:
    apis = await _replicas(make_api)
    tally = await drive(_urls(apis), PATTERNS[pattern], DURATION_S)
    _assert_within_budget(tally)
    if pattern != "all_to_one":
        assert len(tally.by_replica) == 3, tally


async def test_the_refill_is_shared_once_the_burst_is_spent(make_api: Any) -> None:
    """After the burst, three replicas together grant rpm/60 a second, not three times it."""
    apis = await _replicas(make_api)
    urls = _urls(apis)
    burst = await drive(urls, PATTERNS["round_robin"], DURATION_S)  # spends the burst
    assert burst.refused > 100, burst
    tally = await drive(urls, PATTERNS["round_robin"], 3.0, workers=3)
    expected = RPM / 60.0 * tally.elapsed_s
    assert tally.refused > 0
    # A few tokens may wait in the pool or a lease at either end of the window.
    assert abs(tally.allowed - expected) <= TOLERANCE * expected + 3, (tally, expected)


async def test_a_client_well_under_its_budget_is_never_refused(make_api: Any) -> None:
    """A client far below rpm, spread over the replicas at any pace, gets no 429: the
    replica that leased the whole pool gives its share back when another needs it."""
    apis = await _replicas(make_api, rpm=60)
    statuses = []
    for n, pause in enumerate([0.0, 0.05, 0.0, 0.3, 0.0, 1.2, 0.0, 0.0, 0.1, 0.0] * 2):
        await asyncio.sleep(pause)
        statuses.append((await apis[n % 3].request("GET", "/api/v1/metadata")).status)
    assert statuses == [200] * 20


async def test_two_clients_have_budgets_of_their_own(make_api: Any) -> None:
    """A second address hammering the same replicas takes nothing from the first's budget."""
    apis = await _replicas(make_api)
    urls = _urls(apis)
    first, second = await asyncio.gather(
        drive(urls, PATTERNS["round_robin"], DURATION_S, source="127.0.0.1", workers=4),
        drive(urls, PATTERNS["skewed_70_20_10"], DURATION_S, source="127.0.0.2", workers=4),
    )
    _assert_within_budget(first)
    _assert_within_budget(second)


async def test_a_refusal_carries_retry_after_and_the_rate_limit_headers(make_api: Any) -> None:
    apis = await _replicas(make_api, rpm=60)
    tally = await drive(_urls(apis), PATTERNS["round_robin"], 1.0, workers=3)
    assert tally.refused > 0
    assert abs(tally.allowed - budget(60, tally.elapsed_s)) <= 0.2 * 61
    for headers in tally.refusals:
        assert int(headers["Retry-After"]) >= 1
        assert headers["X-RateLimit-Limit"] == "60"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert 0 <= int(headers["X-RateLimit-Reset"]) <= 61
    refused = await apis[1].request("GET", "/api/v1/runs")
    assert refused.status == 429
    assert refused.body["error"] == "rate_limited"
    assert "60 requests per minute" in refused.body["detail"]
    health = await apis[2].request("GET", "/health")
    assert health.status == 200  # never limited, even for a client over its budget


HOSTILE_FORWARDED = (
    "10.0.0.{n}",
    "{n}, 127.0.0.1",
    "unknown",
    "",
    "::1%eth0",
    "x" * 3000,
    "\u202e{n}",
    "1.1.1.1, 2.2.2.2, 3.3.3.3, {n}",
)


async def test_a_forged_forwarded_for_does_not_make_new_clients(make_api: Any) -> None:
    """The limit keys on the connection's address, as on one server: a client naming
    itself otherwise in X-Forwarded-For (or Forwarded, X-Real-IP) still spends one budget."""
    apis = await _replicas(make_api)

    def forged(n: int) -> dict[str, str]:
        value = HOSTILE_FORWARDED[n % len(HOSTILE_FORWARDED)].format(n=n)
        return {
            "X-Forwarded-For": value,
            "Forwarded": f'for="{n}"',
            "X-Real-IP": f"10.9.{n % 250}.1",
        }

    tally = await drive(_urls(apis), PATTERNS["round_robin"], DURATION_S, headers=forged)
    _assert_within_budget(tally)


async def test_hostile_client_keys_are_stored_and_limited(make_api: Any) -> None:
    """Whatever string names a client (NUL, lone surrogate, 100 kB, right-to-left
    mark), the shared pools take it and limit it; none breaks the others' exchange."""
    apis = await _replicas(make_api, count=2, rpm=3)
    shared = [_shared(api) for api in apis]
    names = ["\x00", "\udcff", "y" * 100_000, "\u202e1.2.3.4", "'; DROP TABLE x; --", "unknown"]
    for name in names:
        decisions = [await shared[n % 2].decide(name) for n in range(6)]
        assert [d.allowed for d in decisions[:3]].count(True) >= 2
    await asyncio.sleep(3 * TICK_S)  # exchanged, and the pools know every one
    for name in names:
        allowed = sum([(await shared[n % 2].decide(name)).allowed for n in range(6)])
        assert allowed <= 1, name  # spent: at most a token refilled since
    database = apis[0].client.server.app[DATABASE]
    assert isinstance(database, PostgresDatabase)
    async with database.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM rate_limit_pools") >= len(names)
        assert await conn.fetchval("SELECT max(length(client)) FROM rate_limit_pools") <= 64
    assert all(limiter.shared for limiter in shared)


def _shared(api: Any) -> SharedRateLimiter:
    limiter = api.client.server.app[RATE_LIMITER]
    assert isinstance(limiter, SharedRateLimiter)
    return limiter
