"""The upsert's staleness guard, on both backends in lock step (``test_pg_parity.Pair``):
random interleavings of stamped snapshots (several sources, none, sequences going back
and forth) and direct PATCHes give the same answers and runs on SQLite and PostgreSQL,
and the runs a model of the rule predicts; the PostgreSQL migration adds the kept
snapshot to a table that already holds runs (NULL for them)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import asyncpg
import pytest
from test_pg_parity import Clock, Pair

from server.contract.models import RunCreate, RunUpdate, UpsertItem
from server.postgres import database as pg_database
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.schema import MIGRATIONS, SCHEMA_VERSION, current_version, migrate
from server.postgres.url import parse_url
from server.storage import database as sqlite_database
from server.storage.database import Database

SOURCES = ("sidecar-a/1111", "sidecar-b/2222", None)


@pytest.fixture
def pair(sqlitedb: Database, pgdb: PostgresDatabase, monkeypatch: pytest.MonkeyPatch) -> Pair:
    monkeypatch.setattr(sqlite_database, "utc_now", Clock())
    monkeypatch.setattr(pg_database, "utc_now", Clock())
    return Pair(sqlitedb, pgdb)


def _create(event_id: str) -> RunCreate:
    return RunCreate.model_validate(
        {
            "event_id": event_id,
            "run_id": f"run-{event_id}",
            "agent_name": "agent-a",
            "job_type": "job",
            "start_time": "2026-03-01T11:00:00Z",
        }
    )


def _item(event_id: str, source: str | None, sequence: int, items: int) -> UpsertItem:
    stamp = {} if source is None else {"source": source, "sequence": sequence}
    return UpsertItem.model_validate(
        {"event_id": event_id, "update": {"items_succeeded": items}, **stamp}
    )


@dataclass
class Model:
    """The rule: an item from the source the run keeps, with a lower sequence, is
    skipped; any other is applied, and a stamped one that is applied is kept."""

    items: int = 0
    kept: tuple[str, int] | None = None
    outcomes: list[str] = field(default_factory=list)

    def upsert(self, source: str | None, sequence: int, items: int) -> str:
        kept = self.kept
        if source is not None and kept is not None and kept[0] == source and sequence < kept[1]:
            return "unchanged"
        if source is not None:
            self.kept = (source, sequence)
        changed = items != self.items
        self.items = items
        return "updated" if changed else "unchanged"


@pytest.mark.parametrize("seed", range(12))
async def test_random_interleavings_follow_the_rule_on_both_backends(pair: Pair, seed: int) -> None:
    rng = random.Random(seed)
    event_ids = [f"run-{seed}-{i}" for i in range(3)]
    models = {event_id: Model() for event_id in event_ids}
    for event_id in event_ids:
        await pair.both(lambda db, e=event_id: db.create(_create(e)))
    for _ in range(60):
        event_id = rng.choice(event_ids)
        model = models[event_id]
        items = rng.randrange(0, 6)
        if rng.random() < 0.15:  # a direct write: fields only, the kept pair stays
            await pair.both(lambda db, e=event_id, n=items: db.update(e, {"items_succeeded": n}))
            model.items = items
            continue
        source = rng.choice(SOURCES)
        sequence = (
            rng.choice((0, 1, 2, 5, 8, 13, 2**63 - 1))
            if rng.random() < 0.1
            else (rng.randrange(0, 30))
        )
        expected = model.upsert(source, sequence, items)
        item = _item(event_id, source, sequence, items)
        summary = await pair.both(lambda db, i=item: db.upsert_batch([i]))
        assert (summary.updated, summary.unchanged) == (
            (1, 0) if expected == "updated" else (0, 1)
        ), (seed, source, sequence, items, model)
    for event_id in event_ids:
        run = await pair.both(lambda db, e=event_id: db.get(e))
        assert run["items_succeeded"] == models[event_id].items


async def test_an_older_snapshot_in_one_batch_after_a_newer_is_skipped(pair: Pair) -> None:
    await pair.both(lambda db: db.create(_create("one")))
    batch = [
        _item("one", "sidecar-a/1111", 7, 3),
        _item("one", "sidecar-a/1111", 6, 1),
        UpsertItem(event_id="one", update=RunUpdate(status="success"), metrics_patch={"x": 1}),
    ]
    summary = await pair.both(lambda db: db.upsert_batch(batch))
    assert (summary.updated, summary.unchanged) == (2, 1)
    run = await pair.both(lambda db: db.get("one"))
    assert run["items_succeeded"] == 3
    assert run["status"] == "success"


async def test_the_migration_keeps_existing_runs_and_gives_them_no_snapshot(pg_url: str) -> None:
    """A database at version 2 with runs: migration 3 adds the kept snapshot, NULL for
    them; a stamped upsert then applies to an old run and is kept, an older one skipped."""
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        before = tuple(m for m in MIGRATIONS if m.version < 3)
        assert await migrate(conn, before) == [1, 2]
        await conn.execute(
            "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, start_time,"
            " created_at, updated_at) VALUES ('old', 'run-old', 'agent', 'job',"
            " '2026-03-01T11:00:00.000000+00:00', '2026-03-01T11:00:00.000000+00:00',"
            " '2026-03-01T11:00:00.000000+00:00')"
        )
        assert await migrate(conn) == [m.version for m in MIGRATIONS if m.version >= 3]
        assert await current_version(conn) == SCHEMA_VERSION
        row = await conn.fetchrow(
            "SELECT snapshot_source, snapshot_seq FROM agent_runs WHERE event_id = 'old'"
        )
        assert tuple(row) == (None, None)
    finally:
        await conn.close()
    database = await PostgresDatabase.open(PostgresSettings(url=parse_url(pg_url)))
    try:
        summary = await database.upsert_batch([_item("old", "sidecar-a/1111", 5, 4)])
        assert summary.updated == 1
        assert (await database.upsert_batch([_item("old", "sidecar-a/1111", 4, 9)])).unchanged
        run = await database.get("old")
        assert run is not None
        assert run["items_succeeded"] == 4
    finally:
        await database.close()
