"""The shared rate limit's costs (issue 13): the hot path against the single-server
bucket, and one exchange with PostgreSQL by the number of clients it carries.

    python bench/pg_rate_limit.py --url postgresql://user:pass@127.0.0.1:5432/db

Prints figures, asserts nothing (not a test). The database must be migrated (start a
server on it once). Two figures:

1. hot path: CPU time (``time.process_time``) per decision of ``RateLimiter.check``
   and of ``SharedRateLimiter.decide`` for a client already served (its lease filled),
   ``--decisions`` each, alternated over ``--rounds``; the median round.
2. exchange: wall time of one ``PostgresBudget.exchange`` carrying 1, 100 and 1000
   clients (the per-tick cost a replica pays every 0.1 s), median of ``--calls``.

Wall-clock on a shared 2-core machine is noisy; the CPU figures are the steadier.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg

from server.http.ratelimit import RateLimiter
from server.http.shared_ratelimit import WINDOW_S, SharedRateLimiter
from server.postgres.ratelimit import PostgresBudget, Report


async def _hot_path(budget: PostgresBudget, decisions: int, rounds: int) -> None:
    local = RateLimiter(10**9)
    shared = SharedRateLimiter(10**9)
    await shared.tick(budget)
    await shared.decide("203.0.113.1")  # first sight: waits for an exchange
    await shared.tick(budget)  # its lease: the whole pool
    local_s: list[float] = []
    shared_s: list[float] = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(decisions):
            local.check("203.0.113.1")
        local_s.append(time.process_time() - start)
        start = time.process_time()
        for _ in range(decisions):
            await shared.decide("203.0.113.1")
        shared_s.append(time.process_time() - start)
    await shared.tick(budget)  # keeps the shared mode fresh for the next figure
    per_local = statistics.median(local_s) / decisions * 1e6
    per_shared = statistics.median(shared_s) / decisions * 1e6
    print(f"hot path, CPU us/decision: bucket {per_local:.2f}  shared {per_shared:.2f}")


async def _exchange(budget: PostgresBudget, calls: int) -> None:
    for size in (1, 100, 1000):
        clients = [f"198.18.{n // 250}.{n % 250}".encode() for n in range(size)]
        times = []
        for _ in range(calls):
            reports = [Report(c, 0.0, False) for c in clients]
            start = time.perf_counter()
            await budget.exchange("bench", 600, WINDOW_S, reports)
            times.append(time.perf_counter() - start)
        print(f"exchange of {size:>4} clients: {statistics.median(times) * 1e3:.2f} ms (median)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    pool = await asyncpg.create_pool(args.url, min_size=1, max_size=2)
    try:
        budget = PostgresBudget(pool)
        await _hot_path(budget, args.decisions, args.rounds)
        await _exchange(budget, args.calls)
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
