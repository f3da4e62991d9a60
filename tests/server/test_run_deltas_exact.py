"""The run counts and distinct values the writer keeps equal a recount of the file after any
mix of writes through the real Writer: inserts, duplicates, upserts, re-labels, prune- and
reaper-shaped passes, operations that fail after writing (their savepoint undone), a
statement that fails half-way through its rows, and groups that fail whole."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.storage.connection import StorageUnavailable, open_writer
from server.storage.counters import RunCounters
from server.storage.metadata import DistinctValues
from server.storage.run_deltas import RunDeltas
from server.storage.schema import migrate
from server.storage.writer import Writer

AGENTS = ("a", "b", "c", "ä-agent", "")
JOBS = ("j1", "j2", "j3")
STATUSES = ("running", "success", "failure", "partial", "timeout", "cancelled")
NOW = datetime.now(UTC)
KINDS = ("insert", "duplicate", "upsert", "relabel", "prune", "reap", "raises", "half", "fatal")


class OpFailed(Exception):
    """Raised by an operation after it wrote: the writer undoes it alone."""


def stamp(rng: random.Random) -> str:
    """created_at inside the 24 h window, long outside it, or in the future."""
    offset = rng.choice(
        [timedelta(hours=-rng.uniform(0, 23)), timedelta(days=-400), timedelta(hours=30)]
    )
    return (NOW + offset).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def recount(path: Path, window_start: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        one: Callable[[str], Any] = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        return {
            "total": one("SELECT COUNT(*) FROM agent_runs")[0][0],
            "agents": dict(one("SELECT agent_name, COUNT(*) FROM agent_runs GROUP BY 1")),
            "statuses": dict(one("SELECT status, COUNT(*) FROM agent_runs GROUP BY 1")),
            "recent": conn.execute(
                "SELECT COUNT(*) FROM agent_runs WHERE created_at >= ?", (window_start,)
            ).fetchone()[0],
            "agent_names": tuple(
                r[0] for r in one("SELECT DISTINCT agent_name FROM agent_runs ORDER BY 1")
            ),
            "job_types": tuple(
                r[0] for r in one("SELECT DISTINCT job_type FROM agent_runs ORDER BY 1")
            ),
        }
    finally:
        conn.close()


def kept(counters: RunCounters, distinct: DistinctValues) -> dict[str, Any]:
    counts, values = counters.snapshot(), distinct.snapshot()
    return {
        "total": counts.total_runs,
        "agents": dict(counts.agents),
        "statuses": counts.by_status,
        "recent": counts.recent_24h,
        "agent_names": values.agent_names,
        "job_types": values.job_types,
    }


def random_op(
    rng: random.Random, serial: list[int]
) -> tuple[str, Callable[[sqlite3.Connection], Any]]:
    """One write of a random kind, as a function of the writer's connection."""
    serial[0] += 1
    fresh = f"e{serial[0]}"
    old = f"e{rng.randint(1, serial[0])}"  # often an existing run
    # Rare values come and go with their only run; common ones stay listed.
    agent = rng.choice((*AGENTS, f"agent-{serial[0]}"))
    job = rng.choice((*JOBS, f"job-{serial[0]}"))
    row = (agent, job, rng.choice(STATUSES), stamp(rng))
    kind = rng.choice(KINDS)
    upsert_id = rng.choice((old, fresh))
    labels = ("agent_name", "job_type", "status", "created_at")
    column, value = rng.choice([*zip(labels, row, strict=True), ("items_failed", 3)])
    insert = (
        "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, status, start_time,"
        " created_at) VALUES (?, 'r', ?, ?, ?, 't', ?)"
    )

    def op(conn: sqlite3.Connection) -> Any:
        if kind == "insert":
            conn.execute(insert, (fresh, *row))
        elif kind == "duplicate":
            conn.execute(insert.replace("INSERT", "INSERT OR IGNORE"), (old, *row))
        elif kind == "upsert":
            conn.execute(
                insert + " ON CONFLICT(event_id) DO UPDATE SET agent_name = excluded.agent_name,"
                " status = excluded.status",
                (upsert_id, *row),
            )
        elif kind == "relabel":
            conn.execute(f"UPDATE agent_runs SET {column} = ? WHERE event_id = ?", (value, old))
        elif kind == "prune":  # retention's shape: a bounded batch of the oldest rows
            conn.execute(
                "DELETE FROM agent_runs WHERE rowid IN (SELECT rowid FROM agent_runs"
                " ORDER BY created_at LIMIT ?)",
                (rng.randint(1, 3),),
            )
        elif kind == "reap":  # the reaper's shape: running runs marked timeout
            conn.execute(
                "UPDATE agent_runs SET status = 'timeout', reaped_at = 'x' WHERE rowid IN"
                " (SELECT rowid FROM agent_runs WHERE status = 'running' LIMIT 2)"
            )
        elif kind == "raises":  # wrote, then failed: its savepoint is rolled back
            conn.execute(insert, (fresh, *row))
            conn.execute("UPDATE agent_runs SET agent_name = 'ghost' WHERE event_id = ?", (old,))
            raise OpFailed
        elif kind == "half":  # one statement fails after re-labelling some of its rows
            conn.execute(
                "UPDATE agent_runs SET agent_name = 'half-ghost', items_failed ="
                " CASE WHEN rowid = (SELECT max(rowid) FROM agent_runs) THEN -1 ELSE 0 END"
            )
        else:  # an operational error: the whole group is rolled back and answered 503
            conn.execute(insert, (fresh, "fatal-ghost", "fatal-job", "running", row[3]))
            raise sqlite3.OperationalError("disk I/O error (injected)")

    return kind, op


@pytest.mark.parametrize("seed", range(4))
async def test_kept_counts_equal_a_recount_after_any_mix(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "runs.sqlite"
    conn = open_writer(path, journal_mode="WAL", synchronous="NORMAL", busy_timeout_ms=5000)
    migrate(conn)
    counters, distinct = RunCounters(), DistinctValues()
    deltas = RunDeltas(counters, distinct)
    deltas.install(conn)
    counters.load(conn)
    distinct.load(conn)
    writer = Writer(conn, hooks=(deltas,))
    writer.start()
    rng = random.Random(seed)
    serial = [0]
    outcomes: set[tuple[str, str]] = set()
    try:
        for _ in range(80):  # rounds of concurrent operations: they share groups
            ops = [random_op(rng, serial) for _ in range(rng.randint(1, 12))]
            results = await asyncio.gather(
                *(writer.run(op) for _, op in ops), return_exceptions=True
            )
            for (kind, _), result in zip(ops, results, strict=True):
                name = type(result).__name__ if isinstance(result, BaseException) else "ok"
                outcomes.add((kind, name))
            assert kept(counters, distinct) == recount(path, counters.window_start)
    finally:
        await writer.close()
    # Every kind of write committed at least once and every kind of failure happened, so
    # the equality above was tested against each (a broken trigger fails its writes).
    for kind in ("insert", "duplicate", "upsert", "relabel", "prune", "reap"):
        assert (kind, "ok") in outcomes
    assert ("raises", "OpFailed") in outcomes
    assert ("half", "ValidationFailed") in outcomes  # the half-way statement (CHECK)
    assert ("fatal", StorageUnavailable.__name__) in outcomes
    assert recount(path, counters.window_start)["total"] > 5
