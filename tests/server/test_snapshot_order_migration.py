"""SQLite migration 10 on a file that holds runs: they keep everything and get no kept
snapshot (NULL), and the staleness guard works on them from the first stamped upsert."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from server.contract.models import UpsertItem
from server.storage.database import Database, StorageSettings
from server.storage.schema import MIGRATIONS, SCHEMA_VERSION


def _item(sequence: int, items: int) -> UpsertItem:
    return UpsertItem.model_validate(
        {
            "event_id": "old",
            "update": {"items_succeeded": items},
            "source": "sidecar-a/1111",
            "sequence": sequence,
        }
    )


async def test_migration_10_on_a_file_with_runs(tmp_path: Path) -> None:
    path = tmp_path / "v9.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS:
        if migration.version < 10:
            for statement in migration.statements:
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 9")
    conn.execute(
        "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, start_time,"
        " created_at, updated_at, items_succeeded) VALUES ('old', 'run-old', 'agent', 'job',"
        " '2026-03-01T11:00:00.000000+00:00', '2026-03-01T11:00:00.000000+00:00',"
        " '2026-03-01T11:00:00.000000+00:00', 2)"
    )
    conn.close()
    database = Database.open(StorageSettings(path=path))
    try:
        run = await database.get("old")
        assert run is not None
        assert run["items_succeeded"] == 2
        assert (await database.upsert_batch([_item(5, 4)])).updated == 1
        assert (await database.upsert_batch([_item(4, 9)])).unchanged == 1
        run = await database.get("old")
        assert run is not None
        assert run["items_succeeded"] == 4
    finally:
        await database.close()
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert check.execute(
            "SELECT snapshot_source, snapshot_seq, run_json IS NOT NULL FROM agent_runs"
        ).fetchone() == ("sidecar-a/1111", 5, 1)
    finally:
        check.close()


async def test_a_run_from_before_migration_10_has_no_kept_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "v9b.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS:
        if migration.version < 10:
            for statement in migration.statements:
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 9")
    conn.execute(
        "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, start_time,"
        " created_at) VALUES ('old', 'run-old', 'agent', 'job',"
        " '2026-03-01T11:00:00.000000+00:00', '2026-03-01T11:00:00.000000+00:00')"
    )
    conn.close()
    database = Database.open(StorageSettings(path=path))
    await database.close()
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT snapshot_source, snapshot_seq FROM agent_runs").fetchone() == (
            None,
            None,
        )
    finally:
        check.close()
