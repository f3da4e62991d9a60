"""Per-client rate limiting: a token bucket per address, in bounded memory.

Each client may burst up to ``rpm`` requests and then refills at rpm/60 per
second. Buckets live in an LRU map capped at ``max_clients``; evicting the
least recently seen client only ever grants it a fresh bucket, so memory stays
bounded whatever the number of clients.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float
    reset_s: float

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


class Limiter(Protocol):
    """What the middleware asks: this process's buckets, or the replicas' shared ones
    (``server.http.shared_ratelimit``)."""

    rpm: int

    async def decide(self, client: str) -> Decision: ...


class RateLimiter:
    def __init__(
        self, rpm: int, *, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rpm = rpm
        self.max_clients = max_clients
        self._rate = rpm / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def decide(self, client: str) -> Decision:
        return self.check(client)

    def check(self, client: str) -> Decision:
        """Take one token for client if it has one."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(client, (float(self.rpm), now))
        tokens = min(float(self.rpm), tokens + (now - stamp) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        retry_after = 0.0 if allowed else (1.0 - tokens) / self._rate
        reset = (self.rpm - tokens) / self._rate
        return Decision(allowed, self.rpm, int(tokens), retry_after, reset)
