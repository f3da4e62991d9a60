"""Migration 9 (histograms as rows) on a version-8 database with data: every bucket of
the JSON histograms becomes a row, and the server answers /api/v1/stats as before."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from server.contract.stats import StatsQuery
from server.storage import rollups
from server.storage.schema import MIGRATIONS
from server.storage.stats import compute_stats

STATUSES = ("running", "success", "failure", "partial", "timeout", "cancelled")
COLUMNS = (
    "event_id, run_id, agent_name, job_type, status, start_time, duration_ms,"
    " items_discovered, items_succeeded, items_failed, created_at"
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
    """A database written by the version-8 schema (its JSON triggers): inserts, then
    finishing, re-labelling and deleting runs (stale cells among them)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for migration in MIGRATIONS[:8]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 8")
    durations = (0, 1, 5, 127, 128, 129, 4000, 60_000, 10**6, 2**40)
    conn.execute("BEGIN")
    for n in range(600):
        conn.execute(
            f"INSERT INTO agent_runs ({COLUMNS}) VALUES ({', '.join('?' * 11)})",
            (
                f"e{n}",
                f"r{n}",
                f"agent-{rng.randrange(4)}",
                f"job-{rng.randrange(3)}",
                rng.choice(STATUSES),
                stamp(rng),
                rng.choice(durations),
                rng.randrange(20),
                rng.randrange(20),
                rng.randrange(3),
                f"2026-04-0{rng.randrange(1, 5)}T00:00:00.000000+00:00",
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


def json_histograms(conn: sqlite3.Connection, grain: rollups.Grain) -> dict[Any, dict[str, int]]:
    return {
        (cell, job, status): json.loads(hist)
        for cell, job, status, hist in conn.execute(
            f"SELECT {grain.key}, job_type, status, duration_hist FROM {grain.table}"
        )
    }


def cells(conn: sqlite3.Connection, grain: rollups.Grain) -> list[tuple[Any, ...]]:
    return conn.execute(
        f"SELECT {grain.key}, job_type, status, runs, durations, duration_max, items_discovered,"
        " items_succeeded, items_failed, first_start, last_start, stale_bounds"
        f" FROM {grain.table} ORDER BY 1, 2, 3"
    ).fetchall()


def test_every_json_bucket_becomes_a_row_and_the_cells_stay(tmp_path: Path) -> None:
    path = tmp_path / "v8.sqlite"
    version_8(path, random.Random(11))
    conn = sqlite3.connect(path, isolation_level=None)
    before = {grain: (json_histograms(conn, grain), cells(conn, grain)) for grain in rollups.GRAINS}
    assert any(row[-1] for grain in rollups.GRAINS for row in before[grain][1])  # stale cells
    for statement in MIGRATIONS[8].statements:
        conn.execute(statement)
    for grain in rollups.GRAINS:
        histograms, kept = before[grain]
        rows: dict[Any, dict[str, int]] = {key: {} for key in histograms}
        for cell, job, status, bucket, n in conn.execute(
            f"SELECT {grain.key}, job_type, status, bucket, n FROM {grain.hist}"
        ):
            rows[(cell, job, status)][str(bucket)] = n
        assert rows == histograms
        assert cells(conn, grain) == kept


async def test_stats_answers_are_the_same_after_the_migration(
    tmp_path: Path, make_api: Callable[..., Awaitable[Any]]
) -> None:
    """Before: the answers of the version-8 database (its runs, which its rollups were
    kept equal to, ``test_stats_rollups``); after: the real server's, having migrated
    the file at start and then taken more writes through its new triggers."""
    path = tmp_path / "t.sqlite"  # make_config's database
    version_8(path, random.Random(5))
    conn = sqlite3.connect(path)
    expected = [
        orjson.loads(
            orjson.dumps(compute_stats(conn, StatsQuery.model_validate(params), use_rollups=False))
        )
        for params in QUERIES
    ]
    conn.close()
    api = await make_api()
    for params, want in zip(QUERIES, expected, strict=True):
        reply = await api.get("/api/v1/stats", params=params)
        assert reply.status == 200, reply.body
        assert reply.body["groups"] == want, params
    migrated = sqlite3.connect(path)
    assert migrated.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS[-1].version
    migrated.close()
    # the new triggers keep the answers: a lifecycle through the API, then the same
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
    conn = sqlite3.connect(path)
    for params in QUERIES:
        query = StatsQuery.model_validate(params)
        want = orjson.loads(orjson.dumps(compute_stats(conn, query, use_rollups=False)))
        reply = await api.get("/api/v1/stats", params=params)
        assert reply.body["groups"] == want, params
    conn.close()
