"""The failover policy on its own (``spoold.upstream.selection``): no sockets, a fake clock."""

from __future__ import annotations

import pytest

from spoold.upstream.client import BatchAnswer, problem_of
from spoold.upstream.retry import Backoff
from spoold.upstream.selection import Selection, public_url

URLS = ["http://a:1", "http://b:2", "http://c:3"]
#: No jitter: rand() = 1.0 makes a delay exactly base * 2**(n-1), capped.
BACKOFF = Backoff(base_s=1.0, cap_s=8.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def selection(clock: Clock, urls: list[str] = URLS) -> Selection:
    return Selection(urls, BACKOFF, clock=clock, rand=lambda: 1.0)


def test_the_first_of_the_list_is_current_at_start(clock: Clock) -> None:
    """Nothing contacted yet: preference order, the first one first."""
    chosen = selection(clock)
    assert chosen.order() == [0, 1, 2]
    assert chosen.current == 0
    assert [m["current"] for m in chosen.as_json()] == [True, False, False]
    assert {m["state"] for m in chosen.as_json()} == {"unknown"}


def test_a_failure_moves_to_the_next_and_its_backoff_grows(clock: Clock) -> None:
    """A down upstream leaves the order; each failure in a row doubles its back-off (capped)."""
    chosen = selection(clock)
    chosen.failed(0, "unreachable", "refused", None)
    assert chosen.order() == [1, 2]
    assert chosen.members[0].retry_at == clock.now + 1.0
    for expected in (2.0, 4.0, 8.0, 8.0):
        chosen.failed(0, "unreachable", "refused", None)
        assert chosen.members[0].retry_at == clock.now + expected
    assert chosen.members[0].failures == 5


def test_retry_after_lengthens_an_upstreams_backoff_never_shortens_it(clock: Clock) -> None:
    """A 503 with Retry-After: 60 keeps that upstream out for 60 s; Retry-After: 0 for its back-off."""
    chosen = selection(clock)
    chosen.failed(0, "http_503", "HTTP 503", 60.0)
    assert chosen.members[0].retry_at == clock.now + 60.0
    chosen.failed(1, "http_503", "HTTP 503", 0.0)
    assert chosen.members[1].retry_at == clock.now + 1.0


def test_a_down_upstream_is_probed_once_its_backoff_ends_never_before_nor_twice(
    clock: Clock,
) -> None:
    """Probes are due at retry_at, one at a time per upstream."""
    chosen = selection(clock)
    chosen.failed(0, "unreachable", "refused", None)
    assert chosen.take_due_probes() == []
    clock.now += 0.999
    assert chosen.take_due_probes() == []
    clock.now += 0.001
    assert chosen.take_due_probes() == [0]
    assert chosen.take_due_probes() == []  # already being probed
    chosen.probed(0, healthy=False, problem="unreachable", error="refused")
    assert chosen.members[0].failures == 2
    assert chosen.take_due_probes() == []  # a new, longer back-off
    clock.now += 2.0
    assert chosen.take_due_probes() == [0]


def test_fail_back_to_the_preferred_one_when_its_probe_passes(clock: Clock) -> None:
    """The preferred upstream comes back after a healthy probe; the next batch goes to it."""
    chosen = selection(clock)
    chosen.failed(0, "unreachable", "refused", None)
    chosen.succeeded(1)
    assert chosen.current == 1
    clock.now += 1.0
    assert chosen.take_due_probes() == [0]
    assert chosen.current == 1  # not before the probe said so
    chosen.probed(0, healthy=True)
    assert chosen.current == 0
    assert chosen.order() == [0, 1, 2]


def test_a_flapping_upstream_backs_off_longer_each_time(clock: Clock) -> None:
    """/health ok but its batches fail: the probe does not reset its failures; a batch does."""
    chosen = selection(clock)
    waits = []
    for _ in range(4):
        chosen.failed(0, "http_503", "HTTP 503", None)
        waits.append(chosen.members[0].retry_at - clock.now)
        clock.now = chosen.members[0].retry_at
        assert chosen.take_due_probes() == [0]
        chosen.probed(0, healthy=True)
        assert chosen.current == 0
    assert waits == [1.0, 2.0, 4.0, 8.0]
    chosen.succeeded(0)
    chosen.failed(0, "http_503", "HTTP 503", None)
    assert chosen.members[0].retry_at - clock.now == 1.0


def test_all_down_one_attempt_goes_to_the_upstream_whose_backoff_ends_first(
    clock: Clock,
) -> None:
    """Every upstream down: the order is the single soonest one (ties: preference order)."""
    chosen = selection(clock)
    for index in (0, 1, 2):
        chosen.failed(index, "unreachable", "refused", None)
    assert chosen.order() == [0]  # all at +1 s: the preferred
    chosen.failed(0, "unreachable", "refused", None)  # now +2 s
    assert chosen.order() == [1]
    chosen.failed(1, "unreachable", "refused", None)
    chosen.failed(1, "unreachable", "refused", None)  # +4 s
    assert chosen.order() == [2]


def test_a_single_upstream_is_always_tried_and_never_probed_in_the_background(
    clock: Clock,
) -> None:
    """One URL behaves as before: the drainer's retries are its probe."""
    chosen = selection(clock, URLS[:1])
    chosen.failed(0, "unreachable", "refused", None)
    assert chosen.order() == [0]
    clock.now += 100
    assert chosen.take_due_probes() == []


def test_an_upstream_answering_again_is_up_and_its_problem_is_cleared(clock: Clock) -> None:
    """A delivered batch clears the error and the failures, and records the success."""
    chosen = selection(clock)
    chosen.failed(2, "tls", "TLS certificate verify failed", None)
    member = chosen.as_json()[2]
    assert member["state"] == "down"
    assert member["problem"] == "tls"
    assert member["retry_in_s"] == 1.0
    chosen.succeeded(2)
    member = chosen.as_json()[2]
    assert (member["state"], member["problem"], member["error"]) == ("up", None, None)
    assert member["consecutive_failures"] == 0
    assert member["last_success"] is not None
    assert member["last_failure"] is not None


def test_urls_are_listed_without_credentials() -> None:
    """A user:password in a URL never reaches /health or a log."""
    chosen = Selection(["http://user:pa55@a:1", "https://b"], BACKOFF)
    assert [m.url for m in chosen.members] == ["http://a:1", "https://b"]
    assert public_url("http://u:p@[::1]:8/x") == "http://[::1]:8/x"


def test_no_upstream_at_all_is_refused() -> None:
    """An empty list is a programming error (the config refuses it first)."""
    with pytest.raises(ValueError, match="at least one"):
        Selection([], BACKOFF)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (BatchAnswer("retry", 0, cause="Cannot connect to host a:1"), "unreachable"),
        (BatchAnswer("retry", 0, cause="TLS certificate verify failed (a:1): x"), "tls"),
        (BatchAnswer("retry", 503, retry_after_s=5, cause="HTTP 503"), "http_503"),
        (BatchAnswer("retry", 599, cause="HTTP 599"), "http_other"),
        (BatchAnswer("auth", 401, cause="HTTP 401"), "auth"),
        (BatchAnswer("unexpected", 200, cause="unexpected answer: HTTP 200"), "unexpected_answer"),
    ],
)
def test_problems_are_a_small_fixed_set(answer: BatchAnswer, problem: str) -> None:
    """Each failed attempt is named by a bounded word (shown per upstream on /health)."""
    assert problem_of(answer) == problem
