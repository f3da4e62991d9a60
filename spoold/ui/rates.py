"""Accept and drain rates for the status page, from the ledger's counters sampled in memory.

The ledger (``spoold.state.ledger``) only counts up; a rate is the difference between
its counters now and a sample taken up to ``WINDOW_S`` ago, divided by the
time between them. A sampler task owned by the app's lifecycle (``sampling``)
records one sample a second into a ring of ``WINDOW_S / EVERY_S + 1`` entries:
a few hundred bytes, one short lock per second, nothing on the accept path.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: The rates are over the last this many seconds (or since start-up, when younger).
WINDOW_S = 60.0
#: One sample of the counters this often.
EVERY_S = 1.0

Clock = Callable[[], float]


class Counters(Protocol):
    """What the page reads of the ledger's counts (``spoold.state.ledger.Counts``)."""

    @property
    def accepted(self) -> int: ...
    @property
    def forwarded(self) -> int: ...
    @property
    def dead_lettered(self) -> int: ...
    @property
    def duplicates(self) -> int: ...


class CounterSource(Protocol):
    """The ledger (``spoold.state.ledger.Ledger``): one consistent snapshot of its counts."""

    def snapshot(self) -> Counters: ...


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    accepted: int
    forwarded: int
    dead_lettered: int


@dataclass(frozen=True, slots=True)
class Rates:
    """Operations per second over the last ``window_s`` seconds."""

    window_s: float
    accepted_per_s: float
    forwarded_per_s: float
    dead_lettered_per_s: float


class RateRing:
    """The last ``window_s`` of counter samples; rates between the oldest and now."""

    def __init__(
        self, window_s: float = WINDOW_S, every_s: float = EVERY_S, clock: Clock = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=int(window_s / every_s) + 1)

    def add(self, counts: Counters) -> None:
        self._samples.append(_sample(counts, self._clock()))

    def rates(self, counts: Counters) -> Rates | None:
        """The rates from the oldest sample inside the window to ``counts`` (read now);
        None until a sample at least ``every_s`` old exists."""
        now = _sample(counts, self._clock())
        oldest = next((s for s in self._samples if now.at - s.at <= self.window_s), None)
        if oldest is None:
            return None
        span = now.at - oldest.at
        if span < self.every_s:
            return None

        def per_s(new: int, old: int) -> float:
            return max(0, new - old) / span  # counters never go down; guard anyway

        return Rates(
            window_s=span,
            accepted_per_s=per_s(now.accepted, oldest.accepted),
            forwarded_per_s=per_s(now.forwarded, oldest.forwarded),
            dead_lettered_per_s=per_s(now.dead_lettered, oldest.dead_lettered),
        )


def _sample(counts: Counters, at: float) -> Sample:
    return Sample(at, counts.accepted, counts.forwarded, counts.dead_lettered)


async def sample_forever(ring: RateRing, ledger: CounterSource) -> None:
    """Record the ledger's counters every ``ring.every_s`` until cancelled."""
    while True:
        ring.add(ledger.snapshot())
        await asyncio.sleep(ring.every_s)
