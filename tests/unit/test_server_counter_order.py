"""server.storage.counters.RunCounters: /metrics' agents, busiest first, kept without a sort
per read."""

from __future__ import annotations

import random
import sqlite3

from server.storage.counters import RunCounters
from server.storage.metadata import DistinctValues
from server.storage.run_deltas import RunDeltas
from server.storage.schema import migrate

MINUTE = "2026-01-01T00:00"


def test_agent_order_equals_a_fresh_sort_after_random_changes() -> None:
    """Counts up and down (agents appearing and vanishing, ties broken by name): the
    answer's order is always the brute-force sort by (-count, name)."""
    rng = random.Random(5)
    counters = RunCounters()
    truth: dict[str, int] = {}
    agents = [f"agent-{i:02d}" for i in range(30)] + ["Zeta", "ä", "a b", 'q"', "b\\s", "😀"]
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
    """At rest a read builds nothing: the same agents JSON is served until counts change."""
    counters = RunCounters()
    counters.apply([("a", "success", MINUTE, 2), ("b", "success", MINUTE, 1)])
    first = counters.snapshot().agents_json
    assert counters.snapshot().agents_json is first
    counters.apply([("b", "failure", MINUTE, 2)])
    assert counters.snapshot().agents == {"b": 3, "a": 2}


def test_agent_order_after_the_start_up_load() -> None:
    """The start-up count (one sort, not an insertion per row) orders agents as a sort does,
    ties by name included."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(conn)
        rows = (
            [("b", "success")] * 3
            + [("a", "failure")] * 2
            + [("a", "success")]
            + [("c", "timeout")]
        )
        for i, (agent, status) in enumerate(rows):
            conn.execute(
                "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, status,"
                " start_time, created_at) VALUES (?, ?, ?, 'j', ?, 't', '2026-01-01T00:00:00Z')",
                (f"e{i}", f"r{i}", agent, status),
            )
        counters = RunCounters()
        counters.load(conn)
    finally:
        conn.close()
    assert list(counters.snapshot().agents.items()) == [("a", 3), ("b", 3), ("c", 1)]
    counters.apply([("c", "timeout", MINUTE, 5)])
    assert list(counters.snapshot().agents.items()) == [("c", 6), ("a", 3), ("b", 3)]


def test_changes_netting_to_zero_do_not_pile_up() -> None:
    """A group whose changes cancel out leaves the TEMP delta table empty all the same."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(conn)
        counters = RunCounters()
        deltas = RunDeltas(counters, DistinctValues())
        deltas.install(conn)
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, start_time,"
            " created_at) VALUES ('e', 'r', 'a', 'j', 't', '2026-01-01T00:00:00Z')"
        )
        conn.execute("DELETE FROM agent_runs")
        deltas.before_commit(conn)()
        conn.execute("COMMIT")
        left = conn.execute("SELECT COUNT(*) FROM temp.run_deltas").fetchone()[0]
    finally:
        conn.close()
    assert left == 0
    assert counters.snapshot().total_runs == 0


def test_an_unencodable_name_cannot_break_the_answer() -> None:
    """A lone surrogate (which validation never lets in) is written as U+FFFD, so the
    writer thread that keeps the JSON never raises over a name."""
    counters = RunCounters()
    counters.apply([("bad\ud800", "success", MINUTE, 2), ("ok", "success", MINUTE, 1)])
    assert counters.snapshot().agents == {"bad\ufffd": 2, "ok": 1}
