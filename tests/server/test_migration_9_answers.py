"""Migration 9 on a version-8 database with data: the server answers /api/v1/stats as
before it, and the overdue runs (``stale=true``) are the same, read through one index."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from server.contract.stats import StatsQuery
from server.contract.timestamps import format_instant
from server.storage.schema import MIGRATIONS
from server.storage.stale import StalePolicy, overdue_ids_sql
from server.storage.stats import compute_stats

STATUSES = ("running", "success", "failure", "partial", "timeout", "cancelled")
COLUMNS = (
    "event_id, run_id, agent_name, job_type, status, start_time, duration_ms,"
    " items_discovered, items_succeeded, items_failed, created_at, last_seen_at"
)
QUERIES: tuple[dict[str, str], ...] = (
    {},
    {"group_by": "job_type,status"},
    {"group_by": "day"},
    {"group_by": "hour,job_type"},
    {"group_by": "agent_name"},
    {"start_time_from": "2026-04-01T07:30:00Z", "start_time_to": "2026-04-03T23:00:00Z"},
    {
        "group_by": "day,status",
        "start_time_from": "2026-04-02T00:00:00Z",
        "start_time_to": "2026-04-04T07:59:59.999999Z",
    },
    {"group_by": "hour", "job_type": "job-1", "start_time_from": "2026-04-02T00:00:00Z"},
    {"status": "failure", "group_by": "day"},
    {"status": "running"},
    {"job_type": "job-0", "status": "success", "start_time_to": "2026-04-03T12:00:00Z"},
)


def stamp(rng: random.Random) -> str:
    day, hour = rng.randrange(1, 5), rng.choice((0, 7, 23))
    rest = rng.choice(("00:00.000000", "59:59.999999", "30:00.000000"))
    return f"2026-04-{day:02d}T{hour:02d}:{rest}+00:00"


def version_8(path: Path, rng: random.Random) -> None:
    """A database written by the version-8 schema (its triggers and indexes): inserts,
    then finishing, re-labelling and deleting runs (stale rollup cells among them)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for migration in MIGRATIONS[:8]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 8")
    durations = (0, 1, 5, 127, 128, 129, 4000, 60_000, 10**6, 2**40)
    conn.execute("BEGIN")
    for n in range(600):
        start = stamp(rng)
        conn.execute(
            f"INSERT INTO agent_runs ({COLUMNS}) VALUES ({', '.join('?' * 12)})",
            (
                f"e{n}",
                f"r{n}",
                f"agent-{rng.randrange(4)}",
                f"job-{rng.randrange(3)}",
                rng.choice(STATUSES),
                start,
                rng.choice(durations),
                rng.randrange(20),
                rng.randrange(20),
                rng.randrange(3),
                start,
                start,
            ),
        )
    for _ in range(300):
        event_id = f"e{rng.randrange(600)}"
        column, value = rng.choice(
            (
                ("status", rng.choice(STATUSES)),
                ("job_type", f"job-{rng.randrange(3)}"),
                ("start_time", stamp(rng)),
                ("duration_ms", rng.choice(durations)),
            )
        )
        conn.execute(f"UPDATE agent_runs SET {column} = ? WHERE event_id = ?", (value, event_id))
    conn.execute("DELETE FROM agent_runs WHERE event_id IN ('e1', 'e2', 'e3', 'e50')")
    conn.execute("COMMIT")
    conn.close()


def answers(path: Path) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        stale = conn.execute("SELECT count(*) FROM run_stats_daily WHERE stale_bounds").fetchone()[
            0
        ]
        assert stale  # the rollups' harder case is there
        return [
            orjson.loads(orjson.dumps(compute_stats(conn, StatsQuery.model_validate(params))))
            for params in QUERIES
        ]
    finally:
        conn.close()


def assert_overdue_like_brute_force(path: Path) -> None:
    """The reaper's query, its default range now one range per job type, selects exactly
    the running runs past their allowance (a configured job, one that is never stale,
    and the default)."""
    policy = StalePolicy(default_s=3600, by_job=(("job-1", 60), ("job-2", 0)))
    now = datetime(2026, 4, 3, tzinfo=UTC)
    conn = sqlite3.connect(path)
    try:
        sql, params = overdue_ids_sql(policy, now)
        found = {row[0] for row in conn.execute(sql, params)}
        allowance = {"job-1": 60, "job-2": 0}
        expected = {
            row_id
            for row_id, job, seen in conn.execute(
                "SELECT id, job_type, last_seen_at FROM agent_runs WHERE status = 'running'"
            )
            if allowance.get(job, 3600)
            and seen < format_instant(now - timedelta(seconds=allowance.get(job, 3600)))
        }
    finally:
        conn.close()
    assert expected  # some overdue, some not
    assert found == expected


async def test_stats_and_stale_answers_are_the_same_after_the_migration(
    tmp_path: Path, make_api: Callable[..., Awaitable[Any]]
) -> None:
    """Before: the version-8 file's answers (its rollups); after: the real server's,
    having migrated the file at start, then again after a lifecycle through the API."""
    path = tmp_path / "t.sqlite"  # make_config's database
    version_8(path, random.Random(5))
    before = answers(path)
    api = await make_api(stale_after_s=0)  # no reaping: the answers stay the file's
    for params, want in zip(QUERIES, before, strict=True):
        reply = await api.get("/api/v1/stats", params=params)
        assert reply.status == 200, reply.body
        assert reply.body["groups"] == want, params
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS[-1].version
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "idx_runs_running_seen" not in names
    conn.close()
    assert_overdue_like_brute_force(path)
    run = {
        "event_id": "fresh-1",
        "run_id": "r",
        "agent_name": "agent-1",
        "job_type": "job-1",
        "start_time": "2026-04-02T07:00:00Z",
    }
    assert (await api.post("/api/v1/runs", json=run)).status == 201
    patched = await api.patch(
        "/api/v1/runs/fresh-1", json={"status": "success", "duration_ms": 129}
    )
    assert patched.status == 200, patched.body
    after = answers(path)
    assert after != before
    for params, want in zip(QUERIES, after, strict=True):
        reply = await api.get("/api/v1/stats", params=params)
        assert reply.body["groups"] == want, params
