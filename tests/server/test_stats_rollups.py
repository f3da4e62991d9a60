"""The daily rollups: equal to a recomputation from the runs after any writes, backfilled
by their migration, re-creatable, and read without full scans."""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from server.contract.run_record import RUN_COLUMNS
from server.contract.stats import GROUP_KEYS, StatsQuery
from server.storage import rollups
from server.storage.schema import MIGRATIONS, migrate
from server.storage.stats import (
    PERCENTILE_MAX_ERROR,
    compute_stats,
    percentile,
    representative,
)

STATUSES = ("running", "success", "failure", "partial", "timeout", "cancelled")
FLOORS = rollups.duration_bucket_floors()
COLUMNS = (
    "event_id, run_id, agent_name, job_type, status, start_time, duration_ms,"
    " items_discovered, items_succeeded, items_failed, created_at"
)


def open_db(path: Path, version: int | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    if version is None:
        migrate(conn)
    else:
        for migration in MIGRATIONS[:version]:
            for statement in migration.statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version:d}")
    return conn


def stamp(rng: random.Random) -> str:
    day = rng.randrange(1, 5)
    # few distinct instants, so ties (equal first / last starts) happen
    hour = rng.choice((0, 7, 23))
    rest = rng.choice(("00:00.000000", "59:59.999999", "30:00.000000"))
    return f"2026-04-{day:02d}T{hour:02d}:{rest}+00:00"


def random_run(rng: random.Random, n: int) -> tuple[Any, ...]:
    return (
        f"e{n}",
        f"r{n}",
        f"agent-{rng.randrange(3)}",
        f"job-{rng.randrange(3)}",
        rng.choice(STATUSES),
        stamp(rng),
        rng.choice((0, 0, 1, 5, 127, 128, 129, 4000, 10**6, 2**40)),
        rng.randrange(20),
        rng.randrange(20),
        rng.choice((0, 2**40)),
        f"2026-04-0{rng.randrange(1, 5)}T00:00:00.000000+00:00",
    )


def insert(conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    conn.execute(f"INSERT INTO agent_runs ({COLUMNS}) VALUES ({', '.join('?' * 11)})", row)


def random_write(conn: sqlite3.Connection, rng: random.Random, n: int) -> None:
    ids = [row[0] for row in conn.execute("SELECT event_id FROM agent_runs")]
    roll = rng.random()
    if roll < 0.4 or not ids:
        insert(conn, random_run(rng, n))
        return
    event_id = rng.choice(ids)
    if roll < 0.55:
        conn.execute("DELETE FROM agent_runs WHERE event_id = ?", (event_id,))
        return
    column, value = rng.choice(
        (
            ("status", rng.choice(STATUSES)),
            ("job_type", f"job-{rng.randrange(3)}"),
            ("start_time", stamp(rng)),
            ("duration_ms", rng.choice((0, 3, 300, 7000))),
            ("items_discovered", rng.randrange(9)),
            ("items_failed", rng.randrange(9)),
            ("agent_name", "agent-9"),  # no rollup column: the cell must not change
            ("output_summary", "x"),
        )
    )
    conn.execute(f"UPDATE agent_runs SET {column} = ? WHERE event_id = ?", (value, event_id))


def recomputed(
    conn: sqlite3.Connection, length: int = 10
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """A rollup (cells of ``length`` characters of start_time) recomputed in Python."""
    cells: dict[tuple[str, str, str], dict[str, Any]] = {}
    for job, status, start, duration, disc, succ, fail in conn.execute(
        "SELECT job_type, status, start_time, duration_ms, items_discovered, items_succeeded,"
        " items_failed FROM agent_runs WHERE status != 'running'"
    ):
        cell = cells.setdefault(
            (start[:length], job, status),
            {
                "runs": 0,
                "durations": 0,
                "hist": {},
                "max": None,
                "items": [0, 0, 0],
                "first": start,
                "last": start,
            },
        )
        cell["runs"] += 1
        cell["items"] = [a + b for a, b in zip(cell["items"], (disc, succ, fail), strict=True)]
        cell["first"], cell["last"] = min(cell["first"], start), max(cell["last"], start)
        if duration > 0:
            cell["durations"] += 1
            floor = FLOORS[bisect.bisect_right(FLOORS, duration) - 1]
            cell["hist"][str(floor)] = cell["hist"].get(str(floor), 0) + 1
            cell["max"] = duration if cell["max"] is None else max(cell["max"], duration)
    return cells


def stored(
    conn: sqlite3.Connection, grain: rollups.Grain = rollups.DAILY
) -> dict[tuple[str, str, str], dict[str, Any]]:
    cells = {}
    for row in conn.execute(
        f"SELECT {grain.key}, job_type, status, runs, durations, duration_hist, duration_max,"
        " items_discovered, items_succeeded, items_failed, first_start, last_start,"
        f" stale_bounds FROM {grain.table}"
    ):
        day, job, status, runs, durations, hist, longest, disc, succ, fail, first, last, stale = row
        cells[(day, job, status)] = {
            "runs": runs,
            "durations": durations,
            "hist": json.loads(hist),
            "max": longest,
            "items": [disc, succ, fail],
            "first": first,
            "last": last,
            "stale": stale,
        }
    return cells


def assert_rollup_exact(conn: sqlite3.Connection) -> None:
    for grain in rollups.GRAINS:
        assert_grain_exact(conn, grain)


def assert_grain_exact(conn: sqlite3.Connection, grain: rollups.Grain) -> None:
    want, have = recomputed(conn, grain.length), stored(conn, grain)
    assert set(have) == set(want)  # no empty cell is kept, none is missing
    for key, cell in want.items():
        got = have[key]
        for name in ("runs", "durations", "hist"):
            assert got[name] == cell[name], (key, name)
        assert got["items"] == cell["items"], key
        if got["stale"]:  # bounds only: queries recompute them
            assert got["first"] <= cell["first"]
            assert got["last"] >= cell["last"]
            assert cell["max"] is None or got["max"] >= cell["max"]
        else:
            assert (got["first"], got["last"], got["max"]) == (
                cell["first"],
                cell["last"],
                cell["max"],
            ), key


def random_query(rng: random.Random) -> StatsQuery:
    keys = rng.sample(GROUP_KEYS, rng.randrange(0, 3))
    if "day" in keys and "hour" in keys:
        keys.remove("day")
    params: dict[str, Any] = {"group_by": ",".join(keys)}
    if rng.random() < 0.7:
        minute = rng.choice(("00:00", "00:00.000001", "30:00", "59:59.999999"))
        params["start_time_from"] = f"2026-04-0{rng.randrange(1, 5)}T0{rng.randrange(8)}:{minute}Z"
    if rng.random() < 0.7:
        minute = rng.choice(("00:00", "59:59.999999", "59:00", "00:00.000001"))
        params["start_time_to"] = (
            f"2026-04-0{rng.randrange(3, 6)}T{rng.randrange(24):02d}:{minute}Z"
        )
    if rng.random() < 0.3:
        params["job_type"] = f"job-{rng.randrange(3)}"
    if rng.random() < 0.3:
        params["status"] = rng.choice(STATUSES)
    try:
        return StatsQuery.model_validate(params)
    except ValueError:  # an inverted window
        params.pop("start_time_to")
        return StatsQuery.model_validate(params)


@pytest.mark.parametrize("seed", range(4))
def test_rollups_equal_a_recomputation_after_random_writes(tmp_path: Path, seed: int) -> None:
    """Random inserts, updates and deletes (bounded): after each step the rollup table
    equals a recomputation from the runs, and every answer the rollups give equals the
    answer read from the runs alone."""
    rng = random.Random(seed)
    conn = open_db(tmp_path / "r.sqlite")
    for n in range(25):
        insert(conn, random_run(rng, n))
    for step in range(120):
        random_write(conn, rng, 1000 + step)
        assert_rollup_exact(conn)
        if step % 10 == 0:
            for _ in range(5):
                query = random_query(rng)
                assert compute_stats(conn, query) == compute_stats(
                    conn, query, use_rollups=False
                ), query


def test_item_sums_past_2_63_do_not_fail_writes(tmp_path: Path) -> None:
    """Counters up to 2^63-1 are valid: their sum in a cell becomes a real (SQLite's +
    does that), never an overflow error that would refuse the run; stats still answer."""
    conn = open_db(tmp_path / "big.sqlite")
    big = 2**63 - 1
    for n in range(3):
        insert(
            conn,
            (
                f"e{n}",
                "r",
                "a",
                "j",
                "success",
                "2026-04-01T00:00:00.000000+00:00",
                5,
                big,
                big,
                big,
                "2026-04-01T00:00:00.000000+00:00",
            ),
        )
    conn.execute("DELETE FROM agent_runs WHERE event_id = 'e0'")
    for use_rollups in (True, False):
        (group,) = compute_stats(conn, StatsQuery(), use_rollups=use_rollups)
        assert group["runs"] == 2
        assert group["items"]["discovered"] == pytest.approx(2 * big, rel=1e-9)


def test_migration_backfills_existing_runs(tmp_path: Path) -> None:
    """A database of the version before the rollups gets them filled from its runs."""
    rng = random.Random(7)
    before = 6  # the version before the rollups
    conn = open_db(tmp_path / "old.sqlite", version=before)
    for n in range(300):
        insert(conn, random_run(rng, n))
    assert migrate(conn) == [m.version for m in MIGRATIONS[before:]]
    assert_rollup_exact(conn)
    assert not any(cell["stale"] for cell in stored(conn).values())
    query = StatsQuery(group_by=["job_type", "day"])
    assert compute_stats(conn, query) == compute_stats(conn, query, use_rollups=False)


def test_triggers_are_recreated_after_a_table_rebuild(tmp_path: Path) -> None:
    """A later migration that rebuilds agent_runs drops the triggers and the running
    runs' index; AFTER_REBUILD makes them again and the rollups stay exact."""
    rng = random.Random(3)
    conn = open_db(tmp_path / "rebuild.sqlite")
    for n in range(50):
        insert(conn, random_run(rng, n))
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'agent_runs'").fetchone()[0]
    conn.execute("BEGIN")
    conn.execute(re.sub(r'^CREATE TABLE "?agent_runs"?', "CREATE TABLE agent_runs_new", sql))
    columns = ", ".join(("id", *RUN_COLUMNS))
    conn.execute(f"INSERT INTO agent_runs_new ({columns}) SELECT {columns} FROM agent_runs")
    conn.execute("DROP TABLE agent_runs")
    conn.execute("ALTER TABLE agent_runs_new RENAME TO agent_runs")
    for statement in rollups.AFTER_REBUILD:
        conn.execute(statement)
    conn.execute("COMMIT")
    for step in range(60):
        random_write(conn, rng, 500 + step)
    assert_rollup_exact(conn)


def test_an_update_of_other_columns_leaves_the_rollups_alone(tmp_path: Path) -> None:
    """A PATCH of descriptive fields (or one setting the same values) never marks a cell."""
    conn = open_db(tmp_path / "quiet.sqlite")
    insert(
        conn,
        (
            "e1",
            "r",
            "a",
            "j",
            "success",
            "2026-04-01T00:00:00.000000+00:00",
            5,
            1,
            1,
            0,
            "2026-04-01T00:00:00.000000+00:00",
        ),
    )
    conn.execute(
        "UPDATE agent_runs SET output_summary = 'x', status = 'success',"
        " duration_ms = 5 WHERE event_id = 'e1'"
    )
    (cell,) = stored(conn).values()
    assert cell["stale"] == 0
    assert cell["runs"] == 1


def test_bucket_error_bound_and_percentiles() -> None:
    """Every bucket reports within the documented error; small durations are exact."""
    floors = rollups.duration_bucket_floors()
    assert floors[0] == 1
    assert floors[-1] <= 2**63 - 1
    assert PERCENTILE_MAX_ERROR < 0.05
    for low, high in itertools.pairwise(floors):
        middle = representative(low)
        assert low <= middle <= high - 1
        for value in (low, high - 1):
            assert abs(middle - value) / value <= PERCENTILE_MAX_ERROR + 1e-9
    for value in range(1, rollups.EXACT_BELOW_MS):
        assert representative(value) == value
    rng = random.Random(1)
    values = [int(rng.lognormvariate(9.5, 1.2)) + 1 for _ in range(2000)]
    hist: dict[int, int] = {}
    for value in values:
        floor = max(lo for lo in floors if lo <= value)
        hist[floor] = hist.get(floor, 0) + 1
    ordered = sorted(values)
    for fraction in (0.5, 0.95, 1.0):
        exact = ordered[math.ceil(fraction * len(values)) - 1]
        estimate = percentile(hist, len(values), fraction, max(values))
        assert estimate is not None
        assert abs(estimate - exact) / exact <= PERCENTILE_MAX_ERROR + 1e-9


WINDOWED = [
    {
        "group_by": "job_type,day",
        "start_time_from": "2026-04-01T05:00:00Z",
        "start_time_to": "2026-04-04T07:00:00Z",
    },
    {
        "group_by": "agent_name",
        "start_time_from": "2026-04-02T00:00:00Z",
        "start_time_to": "2026-04-03T00:00:00Z",
    },
    {
        "group_by": "hour",
        "job_type": "job-1",
        "start_time_from": "2026-04-02T00:00:00Z",
        "start_time_to": "2026-04-03T00:00:00Z",
    },
    {"group_by": "status", "start_time_from": "2026-04-01T00:00:00Z"},
    {"group_by": "status", "status": "running", "start_time_to": "2026-04-04T00:00:00Z"},
    {"group_by": "day", "agent_name": "agent-1", "start_time_from": "2026-04-01T00:00:00Z"},
    {
        "group_by": "job_type",
        "created_after": "2026-04-01T00:00:00Z",
        "start_time_from": "2026-04-01T00:00:00Z",
        "start_time_to": "2026-04-02T00:00:00Z",
    },
]


@pytest.mark.parametrize("params", WINDOWED)
def test_windowed_shapes_scan_no_table(tmp_path: Path, params: dict[str, str]) -> None:
    """EXPLAIN QUERY PLAN of every statement a windowed query runs: each reads an index
    range (or the rollups by key): a SEARCH, never a SCAN of the runs or the rollups."""
    rng = random.Random(5)
    conn = open_db(tmp_path / "plans.sqlite")
    for n in range(400):
        insert(conn, random_run(rng, n))
    conn.execute(
        "UPDATE agent_runs SET start_time = '2026-04-02T00:00:00.000000+00:00'"
        " WHERE event_id = 'e1' AND status != 'running'"
    )  # a stale cell, maybe
    conn.execute("ANALYZE")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    compute_stats(conn, StatsQuery.model_validate(params))
    conn.set_trace_callback(None)
    assert statements
    for statement in statements:
        if not statement.lstrip().upper().startswith("SELECT"):
            continue
        # the trace expands parameters into literals: explain the statement as run
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]
        for step in plan:
            if "agent_runs" in step or "run_stats_daily" in step:
                assert step.startswith("SEARCH"), (statement, plan)


def test_values_another_writer_stored_fail_neither_writes_nor_answers(tmp_path: Path) -> None:
    """Reals, text and BLOBs (the sqlite3 shell can store them) never make a trigger fail
    (which would refuse a later API write of that run) nor a stats answer."""
    conn = open_db(tmp_path / "odd.sqlite")
    odd = [(0.5, "a", "j"), (b"xx", "a", "j"), ("text", b"a", "j"), (5.5, "a", b"j"), (7, "a", "j")]
    for n, (duration, agent, job) in enumerate(odd):
        start = b"blob" if n == 1 else "2026-04-01T00:00:00.000000+00:00"
        conn.execute(
            "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, status, start_time,"
            " duration_ms, items_failed, created_at) VALUES (?, 'r', ?, ?, 'success', ?, ?, ?,"
            " '2026-04-01T00:00:00.000000+00:00')",
            (f"e{n}", agent, job, start, duration, "zz" if n == 3 else 1),
        )
    queries = [StatsQuery(group_by=keys) for keys in ([], ["day", "job_type"], ["agent_name"])]
    queries.append(StatsQuery(group_by=["hour", "status"]))
    for query in queries:
        assert compute_stats(conn, query)
    for n in range(len(odd)):
        conn.execute("UPDATE agent_runs SET status = 'timeout' WHERE event_id = ?", (f"e{n}",))
        if n % 2:
            conn.execute("DELETE FROM agent_runs WHERE event_id = ?", (f"e{n}",))
    (group,) = compute_stats(conn, StatsQuery())
    assert group["runs"] == 3
    assert group["by_status"]["timeout"] == 3
