"""server.http.ratelimit.RateLimiter: a token bucket per client, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.http.ratelimit import RateLimiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_up_to_rpm_then_refused():
    """A new client may make rpm requests at once; the next is refused."""
    limiter = RateLimiter(5, clock=Clock())
    decisions = [limiter.check("c") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert all(d.limit == 5 for d in decisions)


def test_refill_at_rpm_per_minute():
    """Tokens come back at rpm/60 per second: after 60/rpm seconds one more request passes."""
    clock = Clock()
    limiter = RateLimiter(60, clock=clock)
    for _ in range(60):
        assert limiter.check("c").allowed
    assert not limiter.check("c").allowed
    clock.now += 0.5
    assert not limiter.check("c").allowed
    clock.now += 0.5
    assert limiter.check("c").allowed
    assert not limiter.check("c").allowed


def test_refill_is_capped_at_rpm():
    """A long idle period never banks more than rpm tokens."""
    clock = Clock()
    limiter = RateLimiter(3, clock=clock)
    limiter.check("c")
    clock.now += 3600 * 24
    results = [limiter.check("c").allowed for _ in range(4)]
    assert results == [True, True, True, False]


def test_retry_after_and_reset_when_refused():
    """A refused decision says when one token will be back, and carries Retry-After >= 1."""
    clock = Clock()
    limiter = RateLimiter(2, clock=clock)  # one token per 30 s
    limiter.check("c")
    limiter.check("c")
    refused = limiter.check("c")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(30.0)
    assert refused.reset_s == pytest.approx(60.0)
    headers = refused.headers()
    assert headers["Retry-After"] == "30"
    assert headers["X-RateLimit-Limit"] == "2"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Reset"] == "60"
    clock.now += 29.9
    assert not limiter.check("c").allowed
    clock.now += 0.2
    assert limiter.check("c").allowed


def test_allowed_decision_has_no_retry_after():
    """Allowed answers carry X-RateLimit-* but no Retry-After."""
    headers = RateLimiter(10, clock=Clock()).check("c").headers()
    assert "Retry-After" not in headers
    assert headers["X-RateLimit-Remaining"] == "9"


def test_clients_are_independent():
    """One client spending its budget does not affect another."""
    limiter = RateLimiter(1, clock=Clock())
    assert limiter.check("a").allowed
    assert not limiter.check("a").allowed
    assert limiter.check("b").allowed


def test_client_count_is_bounded_lru():
    """Memory holds at most max_clients buckets; the least recently seen go first."""
    limiter = RateLimiter(1, max_clients=3, clock=Clock())
    for client in ("a", "b", "c"):
        limiter.check(client)
    limiter.check("a")  # a is now most recently seen (and refused)
    limiter.check("d")  # evicts b
    assert len(limiter) == 3
    assert not limiter.check("a").allowed  # a's empty bucket was kept
    assert limiter.check("b").allowed  # b was forgotten: a fresh bucket


@settings(max_examples=50, deadline=None)
@given(
    rpm=st.integers(1, 1000),
    max_clients=st.integers(1, 50),
    events=st.lists(st.tuples(st.integers(0, 200), st.floats(0, 5)), max_size=300),
)
def test_bounded_and_never_over_budget(rpm, max_clients, events):
    """Whatever the traffic, buckets never exceed max_clients, and within one instant
    a single client is never allowed more than rpm requests."""
    clock = Clock()
    limiter = RateLimiter(rpm, max_clients=max_clients, clock=clock)
    for client, dt in events:
        clock.now += dt
        decision = limiter.check(str(client))
        assert 0 <= decision.remaining <= rpm
        assert len(limiter) <= max_clients
    burst = [limiter.check("burst-client").allowed for _ in range(rpm + 1)]
    assert burst.count(True) <= rpm
    assert burst[-1] is False
