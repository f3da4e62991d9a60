"""Migrations 11 and 12 on a version-10 database with data: every run's ``late`` flag
equals the prompt predicate (the old partial index's rows, and only those), migration 8's
index is gone, and start_time windows answer exactly as brute force, through the new
indexes (both far arms of a window bounded above only included)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from server.contract.models import RunQuery
from server.storage.connection import open_reader
from server.storage.cursor import Position
from server.storage.database import Database, StorageSettings
from server.storage.runs import query_runs, query_sql
from server.storage.schema import (
    EARLY_INDEXES,
    LATE_CREATED_INDEXES,
    LATE_INDEXES,
    MIGRATIONS,
    PROMPT_RUN_SQL,
    SCHEMA_VERSION,
)

ORIGIN = datetime(2026, 3, 1, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def version_10(path: Path, rng: random.Random) -> list[tuple[str, str, str, str, str]]:
    """A database as the version-10 schema left it, a third of its runs late (days,
    minutes past the lag, or foreign text); PATCHes after the inserts."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for migration in MIGRATIONS[:10]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 10")
    rows = []
    for n in range(900):
        created = ORIGIN + timedelta(minutes=7 * n)
        start = created - timedelta(seconds=rng.randrange(60))
        kind = rng.randrange(9)
        if kind < 2:
            start -= timedelta(days=rng.randrange(1, 4))
        elif kind == 2:
            start -= timedelta(minutes=11)
        text = stamp(start)
        if n % 50 == 0:
            text = text.replace("+00:00", "Z")  # another writer's spelling: late
        rows.append(
            (
                f"e{n}",
                f"agent-{rng.randrange(5)}",
                rng.choice(("running", "success")),
                text,
                stamp(created),
            )
        )
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, status, start_time,"
        " created_at, updated_at) VALUES (?, 'r', ?, 'job', ?, ?, ?, ?)",
        [(*row, row[-1]) for row in rows],
    )
    conn.execute("COMMIT")
    conn.execute("UPDATE agent_runs SET status = 'failure' WHERE id % 7 = 0")
    conn.close()
    return [
        (event_id, agent, "failure" if n % 7 == 6 else status, start, created)
        for n, (event_id, agent, status, start, created) in enumerate(rows)
    ]


def test_migration_11_flags_the_late_runs_and_windows_answer(tmp_path: Path) -> None:
    path = tmp_path / "v10.sqlite"
    rows = version_10(path, random.Random(4))
    db = Database.open(StorageSettings(path=path, reader_threads=1))
    asyncio.run(db.close())
    # After the upgrade: a start_time PATCH each way and status PATCHes (the trigger and
    # the late indexes on an upgraded file, not only on a new one).
    writer = sqlite3.connect(path, isolation_level=None)
    flags = dict(writer.execute("SELECT event_id, late FROM agent_runs"))
    position = {row[0]: index for index, row in enumerate(rows)}
    prompt_run = next(event_id for event_id, late in flags.items() if not late)
    late_run = next(event_id for event_id, late in flags.items() if late)
    for event_id, start in ((prompt_run, stamp(ORIGIN)), (late_run, None)):
        index = position[event_id]
        _, agent, status, _, created = rows[index]
        text = start or created  # made late (weeks before it was created), made prompt
        writer.execute("UPDATE agent_runs SET start_time = ? WHERE event_id = ?", (text, event_id))
        rows[index] = (event_id, agent, status, text, created)
    for index in range(0, len(rows), 11):
        event_id, agent, _, start, created = rows[index]
        writer.execute("UPDATE agent_runs SET status = 'cancelled' WHERE event_id = ?", (event_id,))
        rows[index] = (event_id, agent, "cancelled", start, created)
    after_patches = dict(writer.execute("SELECT event_id, late FROM agent_runs"))
    assert (after_patches[prompt_run], after_patches[late_run]) == (1, 0)
    writer.close()
    conn = open_reader(path, busy_timeout_ms=1000)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "idx_runs_start_late" not in names
        late_indexes = (*LATE_INDEXES.values(), *LATE_CREATED_INDEXES.values())
        assert {*late_indexes, *EARLY_INDEXES.values()} <= names
        late = conn.execute("SELECT count(*) FROM agent_runs WHERE late = 1").fetchone()[0]
        assert 200 < late < 450
        assert (
            conn.execute(
                f"SELECT count(*) FROM agent_runs WHERE late IS NOT (NOT {PROMPT_RUN_SQL})"
            ).fetchone()[0]
            == 0
        )
        for low_day, high_day in [(3, 4), (5, 9), (1, 2), (-1, 1)]:
            low = stamp(ORIGIN + timedelta(days=low_day))
            high = stamp(ORIGIN + timedelta(days=high_day))
            for filters in [
                {},
                {"agent_name": "agent-1"},
                {"status": "failure"},
                {"status": "cancelled"},
                {"agent_name": "agent-2", "status": "success"},
            ]:
                query = RunQuery.model_validate(
                    {**filters, "start_time_from": low, "start_time_to": high, "limit": 9}
                )
                got: list[str] = []
                after = None
                for _ in range(200):  # walked with the cursor, 9 a page
                    page = query_runs(conn, query, after)
                    got += [run["event_id"] for run in page.runs]
                    after = page.next_position
                    if after is None:
                        break
                expected = [
                    event_id
                    for event_id, agent, status, start, created in sorted(
                        rows, key=lambda row: (row[4], int(row[0][1:])), reverse=True
                    )
                    if low <= start <= high
                    and filters.get("agent_name", agent) == agent
                    and filters.get("status", status) == status
                ]
                assert got == expected, filters
        one_sided = [
            # Bounded above only: the far arm newest first or by start_time.
            *(
                ("start_time_to", day, {"late_newest_first": choice})
                for day in (2, 5)
                for choice in (False, True)
            ),
            # Bounded below only: from the early indexes, or by start_time.
            *(
                ("start_time_from", day, {"early_indexes": choice})
                for day in (2, 5)
                for choice in (True, False)
            ),
        ]
        for side, day, choice in one_sided:
            bound = stamp(ORIGIN + timedelta(days=day))
            for filters in [{}, {"agent_name": "agent-1"}, {"status": "cancelled"}]:
                query = RunQuery.model_validate({**filters, side: bound, "limit": 9})
                expected = [
                    event_id
                    for event_id, agent, status, start, created in sorted(
                        rows, key=lambda row: (row[4], int(row[0][1:])), reverse=True
                    )
                    if (start <= bound if side == "start_time_to" else start >= bound)
                    and filters.get("agent_name", agent) == agent
                    and filters.get("status", status) == status
                ]
                got = []
                after = None
                for _ in range(200):
                    sql, params = query_sql(query, after, "event_id, created_at", **choice)
                    fetched = conn.execute(sql, params).fetchall()
                    got += [row[0] for row in fetched[:9]]
                    if len(fetched) <= 9:
                        break
                    after = Position(fetched[8][1], fetched[8][2])
                assert got == expected, (filters, side, choice)
    finally:
        conn.close()


def test_migration_11_on_a_file_without_migration_8s_index(tmp_path: Path) -> None:
    """A hand-repaired version-10 file that lost idx_runs_start_late still upgrades (the
    late runs are then found by a scan), and its flags equal the predicate."""
    path = tmp_path / "v10-no-index.sqlite"
    version_10(path, random.Random(5))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP INDEX idx_runs_start_late")
    conn.close()
    db = Database.open(StorageSettings(path=path, reader_threads=1))
    asyncio.run(db.close())
    conn = open_reader(path, busy_timeout_ms=1000)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM agent_runs WHERE late = 1").fetchone()[0] > 200
        assert (
            conn.execute(
                f"SELECT count(*) FROM agent_runs WHERE late IS NOT (NOT {PROMPT_RUN_SQL})"
            ).fetchone()[0]
            == 0
        )
    finally:
        conn.close()
