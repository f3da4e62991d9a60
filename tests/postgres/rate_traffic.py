"""A client hammering several replicas at once, as a load balancer would spread it:
the tally of what the replicas allowed and refused (the rate limit tests' driver)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

#: A cheap limited read: the in-memory metadata snapshot.
PATH = "/api/v1/metadata"


@dataclass
class Tally:
    allowed: int = 0
    refused: int = 0
    unreachable: int = 0
    elapsed_s: float = 0.0
    by_replica: Counter[int] = field(default_factory=Counter)
    refusals: list[Mapping[str, str]] = field(default_factory=list, repr=False)

    @property
    def sent(self) -> int:
        return self.allowed + self.refused


def budget(rpm: int, elapsed_s: float) -> float:
    """A token bucket's allowance over elapsed_s from full: the burst and the refill."""
    return rpm + rpm / 60.0 * elapsed_s


async def drive(
    urls: Sequence[str],
    pick: Callable[[int], int],
    duration_s: float,
    *,
    source: str = "127.0.0.1",
    workers: int = 6,
    headers: Callable[[int], Mapping[str, str]] | None = None,
    alive: Callable[[int], bool] = lambda _: True,
    until: asyncio.Event | None = None,
) -> Tally:
    """Send requests for duration_s (or until ``until`` is set) from ``source``;
    request n goes to ``urls[pick(n)]`` (to the next alive replica when that one is not)."""
    tally = Tally()
    numbers = itertools.count()
    start = time.monotonic()
    deadline = start + duration_s
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=workers * 2)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while time.monotonic() < deadline and not (until and until.is_set()):
                n = next(numbers)
                index = pick(n)
                for _ in range(len(urls)):  # the balancer skips replicas it knows dead
                    if alive(index):
                        break
                    index = (index + 1) % len(urls)
                try:
                    async with session.get(
                        urls[index] + PATH, headers=headers(n) if headers else None
                    ) as reply:
                        await reply.read()
                        status, reply_headers = reply.status, dict(reply.headers)
                except (TimeoutError, aiohttp.ClientError, OSError):
                    tally.unreachable += 1
                    await asyncio.sleep(0.01)
                    continue
                if status == 200:
                    tally.allowed += 1
                    tally.by_replica[index] += 1
                else:
                    assert status == 429, status
                    tally.refused += 1
                    if len(tally.refusals) < 50:
                        tally.refusals.append(reply_headers)

        await asyncio.gather(*(worker() for _ in range(workers)))
    tally.elapsed_s = time.monotonic() - start
    return tally
