"""server.storage.counters.RunCounters: /metrics' agents, busiest first, kept without a sort
per read."""

from __future__ import annotations

import random

from server.storage.counters import RunCounters

MINUTE = "2026-01-01T00:00"


def test_agent_order_equals_a_fresh_sort_after_random_changes() -> None:
    """Counts up and down (agents appearing and vanishing, ties broken by name): the
    answer's order is always the brute-force sort by (-count, name)."""
    rng = random.Random(5)
    counters = RunCounters()
    truth: dict[str, int] = {}
    agents = [f"agent-{i:02d}" for i in range(30)] + ["Zeta", "ä", "a b"]
    for _ in range(400):
        deltas = []
        for _ in range(rng.randint(1, 6)):
            agent = rng.choice(agents)
            n = rng.choice((1, 1, 2, 5)) if truth.get(agent, 0) < 1 else rng.choice((-1, 1, 3))
            n = max(n, -truth.get(agent, 0))
            truth[agent] = truth.get(agent, 0) + n
            deltas.append((agent, "success", MINUTE, n))
        counters.apply(deltas)
        expected = sorted(((a, c) for a, c in truth.items() if c), key=lambda i: (-i[1], i[0]))
        assert list(counters.snapshot().agents.items()) == expected


def test_snapshot_reuses_the_agents_until_a_change() -> None:
    """At rest a read builds nothing: the same agents dict is served until counts change."""
    counters = RunCounters()
    counters.apply([("a", "success", MINUTE, 2), ("b", "success", MINUTE, 1)])
    first = counters.snapshot().agents
    assert counters.snapshot().agents is first
    counters.apply([("b", "failure", MINUTE, 2)])
    assert counters.snapshot().agents == {"b": 3, "a": 2}
