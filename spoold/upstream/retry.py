"""Retry policy for the upstream server, as small pure code.

Which answers are worth retrying, how long to wait (capped exponential backoff
with full jitter), and how to read ``Retry-After`` in both of its forms.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Statuses retried as a whole batch: the server may succeed later.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Statuses that mean our credentials are wrong: retried (an operator can fix the
#: token without losing data) and reported unhealthy, never dead-lettered.
AUTH_STATUSES = frozenset({401, 403})
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter."""

    base_s: float = 0.2
    cap_s: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, *, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        ceiling = min(self.cap_s, self.base_s * self.factor ** max(0, attempt - 1))
        return ceiling * (0.5 + rand() / 2)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), capped; None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def next_wait(attempt: int, retry_after_s: float | None, backoff: Backoff) -> float:
    """The wait before the next try: the server's Retry-After if larger than our backoff."""
    wait = backoff.delay(attempt)
    if retry_after_s is not None:
        wait = max(wait, retry_after_s)
    return wait
