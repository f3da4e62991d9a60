"""Group commit without a SAVEPOINT per operation, and a failing operation still undone
alone: the group is redone with savepoints (see Writer._transaction)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from server.contract.errors import ValidationFailed
from server.contract.models import RunCreate
from server.contract.timestamps import utc_now
from server.storage import runs
from server.storage.database import Database, StorageSettings


def _run() -> RunCreate:
    event_id = str(uuid.uuid4())
    return RunCreate.model_validate(
        {
            "event_id": event_id,
            "run_id": f"r-{event_id[:8]}",
            "agent_name": "grouped",
            "job_type": "j",
            "start_time": "2026-01-12T10:00:00Z",
        }
    )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.open(StorageSettings(path=tmp_path / "g.sqlite"))
    try:
        yield database
    finally:
        await database.close()


def _trace(db: Database) -> list[str]:
    statements: list[str] = []
    db.writer._conn.set_trace_callback(statements.append)
    return statements


async def _in_one_group(db: Database, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    """Queue every fn while the writer is held, so they share one group; their results
    (or exceptions)."""
    hold = threading.Event()
    blocker = asyncio.ensure_future(db.writer.run(lambda conn: hold.wait(10)))
    await asyncio.sleep(0.05)  # the writer is inside the blocker's group now
    tasks = [asyncio.ensure_future(db.writer.run(fn)) for fn in fns]
    await asyncio.sleep(0.05)
    hold.set()
    await blocker
    return await asyncio.gather(*tasks, return_exceptions=True)


def _stored(db: Database, event_ids: list[str]) -> set[str]:
    conn = sqlite3.connect(db.settings.path)
    try:
        marks = ",".join("?" for _ in event_ids)
        rows = conn.execute(
            f"SELECT event_id FROM agent_runs WHERE event_id IN ({marks})", event_ids
        ).fetchall()
        return {row[0] for row in rows}
    finally:
        conn.close()


async def test_a_group_of_good_writes_needs_no_savepoints(db: Database) -> None:
    """Every operation succeeds: one BEGIN, the operations, one COMMIT, no SAVEPOINT."""
    statements = _trace(db)
    now = utc_now()
    made = [_run() for _ in range(20)]
    results = await _in_one_group(
        db, [lambda conn, r=r: runs.insert_row(conn, runs.insert_params(r, now)) for r in made]
    )
    assert results == [True] * 20
    assert not [s for s in statements if s.startswith(("SAVEPOINT", "RELEASE"))], statements
    assert _stored(db, [r.event_id for r in made]) == {r.event_id for r in made}


async def test_a_failing_operation_is_undone_alone_with_what_it_half_did(db: Database) -> None:
    """In one group: good inserts, an operation that inserts then raises, one that breaks a
    constraint. The first gets its own error, its half-done insert is gone; the second
    gets ValidationFailed; every good insert is committed and answered True."""
    statements = _trace(db)
    now = utc_now()
    good = [_run() for _ in range(6)]
    half = _run()

    def half_then_fail(conn: sqlite3.Connection) -> None:
        runs.insert_row(conn, runs.insert_params(half, now))
        raise RuntimeError("domain error after a write")

    def break_constraint(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO agent_runs (event_id) VALUES (NULL)")

    fns: list[Callable[[sqlite3.Connection], Any]] = [
        lambda conn, r=r: runs.insert_row(conn, runs.insert_params(r, now)) for r in good[:3]
    ]
    fns += [half_then_fail, break_constraint]
    fns += [lambda conn, r=r: runs.insert_row(conn, runs.insert_params(r, now)) for r in good[3:]]
    results = await _in_one_group(db, fns)
    assert results[:3] == [True] * 3
    assert results[5:] == [True] * 3
    assert isinstance(results[3], RuntimeError)
    assert isinstance(results[4], ValidationFailed)
    ids = [r.event_id for r in good]
    assert _stored(db, [*ids, half.event_id]) == set(ids)
    assert any(s.startswith("SAVEPOINT") for s in statements)  # the careful attempt ran
    assert db.writer.stats.failed_groups == 0


async def test_each_group_says_where_its_writes_waited(db: Database) -> None:
    """At DEBUG, every committed group logs its size and where its oldest write's time
    went (queued behind the previous group, running, committing): the attribution of a
    slow write (``bench/write_attribution.py`` reads these lines)."""
    hold = threading.Event()
    with capture_logs() as logs:
        blocker = asyncio.ensure_future(db.writer.run(lambda conn: hold.wait(10)))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(db.create(_run())) for _ in range(3)]
        await asyncio.sleep(0.1)  # the three wait behind the held group
        hold.set()
        await blocker
        assert await asyncio.gather(*queued) == [True, True, True]
    groups = [entry for entry in logs if entry["event"] == "db_write_group"]
    assert [entry["operations"] for entry in groups] == [1, 3]
    held, behind = groups
    assert held["run_ms"] >= 50  # the held operation ran in its group
    assert behind["waited_ms"] >= 80  # queued behind it (0.1 s)
    assert behind["run_ms"] >= 0
    assert behind["commit_ms"] >= 0
