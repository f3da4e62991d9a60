"""The status page's rates: the ledger's counters sampled into a ring, differenced over 60 s."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from spoold.ui.rates import RateRing


@dataclass(frozen=True)
class Counts:
    """The ledger's counts, as the ring reads them."""

    accepted: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    duplicates: int = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counts(accepted: int, forwarded: int = 0, dead: int = 0) -> Counts:
    return Counts(accepted=accepted, forwarded=forwarded, dead_lettered=dead)


def test_no_rate_until_a_sample_is_a_second_old() -> None:
    """Right after start-up there is nothing to difference: None ("measuring"), not 0."""
    clock = Clock()
    ring = RateRing(clock=clock)
    assert ring.rates(counts(5)) is None
    ring.add(counts(5))
    clock.now += 0.5
    assert ring.rates(counts(9)) is None
    clock.now += 0.5
    rates = ring.rates(counts(9, 2, 1))
    assert rates is not None
    assert rates.window_s == pytest.approx(1.0)
    assert rates.accepted_per_s == pytest.approx(4.0)
    assert rates.forwarded_per_s == pytest.approx(2.0)
    assert rates.dead_lettered_per_s == pytest.approx(1.0)


def test_rates_cover_the_last_sixty_seconds_only() -> None:
    """A burst older than the window no longer counts; the window is the real span."""
    clock = Clock()
    ring = RateRing(window_s=60, every_s=1, clock=clock)
    accepted = 0
    for second in range(200):
        accepted += 1000 if second < 10 else 10  # a burst in the first 10 s, then 10/s
        ring.add(counts(accepted))
        clock.now += 1
    rates = ring.rates(counts(accepted + 10))  # the second since the last sample: 10 more
    assert rates is not None
    assert rates.window_s == pytest.approx(60.0)
    assert rates.accepted_per_s == pytest.approx(10.0)


def test_the_ring_holds_a_window_of_samples_whatever_the_uptime() -> None:
    """Memory is bounded: window / every + 1 samples, however long spoold runs."""
    clock = Clock()
    ring = RateRing(window_s=60, every_s=1, clock=clock)
    for _ in range(10_000):
        ring.add(counts(1))
        clock.now += 1
    assert len(ring._samples) == 61


def test_a_pause_longer_than_the_window_measures_from_what_is_left() -> None:
    """Samples all older than the window (a stalled loop): no rate rather than a wrong one."""
    clock = Clock()
    ring = RateRing(clock=clock)
    ring.add(counts(0))
    clock.now += 120
    assert ring.rates(counts(100)) is None


def test_counters_never_give_a_negative_rate() -> None:
    """Counters only grow; were one ever lower, the rate is 0, not negative."""
    clock = Clock()
    ring = RateRing(clock=clock)
    ring.add(counts(10, 10, 10))
    clock.now += 2
    rates = ring.rates(counts(5, 5, 5))
    assert rates is not None
    assert (rates.accepted_per_s, rates.forwarded_per_s, rates.dead_lettered_per_s) == (0, 0, 0)
