"""``run_json``, each run's JSON object stored when written (migration 5), stays what the
Python rendering gives after every kind of write: the server's own (create, PATCH,
associate-commit, batch insert and upsert), other writers' (raw SQL, hostile values) and
an older server's database brought up to date by the migration."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.contract.codec import dumps
from server.contract.models import RunQuery
from server.contract.run_record import RUN_COLUMNS
from server.storage import schema
from server.storage.connection import open_reader
from server.storage.runs import _INSERT_COLUMNS, _INSERT_SQL, get_run, query_page_json
from server.storage.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from tests.server.test_run_json import FOREIGN_JSON, hostile_rows, python_page

UPSERT = "/api/v1/runs/batch?mode=upsert"
_NEW = ("heartbeat_timeout_s", "last_seen_at")  # migration 6's answered columns
_OLD_COLUMNS = [c for c in _INSERT_COLUMNS if c not in (*_NEW, "sidecar_id")]
#: An insert into a version 4 or 5 table (before migration 6's columns).
_OLD_INSERT_SQL = (
    f"INSERT INTO agent_runs ({', '.join(_OLD_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _OLD_COLUMNS)})"
)


def old_rows(rng: random.Random) -> list[tuple[Any, ...]]:
    """hostile_rows without migration 6's columns."""
    keep = [_INSERT_COLUMNS.index(column) for column in _OLD_COLUMNS]
    return [tuple(row[i] for i in keep) for row in hostile_rows(rng)]


def stored_objects(conn: sqlite3.Connection) -> dict[str, bytes | None]:
    return {
        str(event_id): None if body is None else bytes(body)
        for event_id, body in conn.execute("SELECT event_id, run_json FROM agent_runs")
    }


def expected_object(conn: sqlite3.Connection, event_id: str) -> bytes:
    """The Python rendering of one stored run, without its URLs (as run_json holds it)."""
    run = get_run(conn, event_id)
    assert run is not None
    return dumps(run)


def assert_consistent(conn: sqlite3.Connection, *, all_exact: bool) -> None:
    """Every stored object is the Python rendering of its row, or NULL (the row then
    goes the Python way); every page answers the Python rendering byte for byte."""
    objects = stored_objects(conn)
    assert objects
    for event_id, body in objects.items():
        if body is not None:
            assert body == expected_object(conn, event_id), event_id
        else:
            assert not all_exact, event_id
    query = RunQuery(limit=1000)
    assert query_page_json(conn, query).body == python_page(conn, query, None)


def test_the_stored_columns_are_the_runs_columns() -> None:
    """run_json renders the columns frozen at migration 6 (5's, plus last_seen_at and
    heartbeat_timeout_s); a new column needs a new migration that rebuilds it (else its
    key would be missing from every answer)."""
    assert schema._V6_COLUMNS == RUN_COLUMNS
    assert set(schema._V6_COLUMNS) - set(schema._V5_COLUMNS) == {
        "last_seen_at",
        "heartbeat_timeout_s",
    }
    later = [m for m in schema.MIGRATIONS if m.version > 6]  # 7: stats rollups, no column
    added = [
        s.split("ADD COLUMN ", 1)[1].split()[0]
        for m in later
        for s in m.statements
        if "agent_runs ADD" in s
    ]
    # Only columns never answered (10: the upsert's kept snapshot; 11: the late flag the
    # start_time windows read) are added in place.
    assert added == ["snapshot_source", "snapshot_seq", "late"]
    assert not set(added) & set(RUN_COLUMNS)
    assert later[-1].version == SCHEMA_VERSION if later else SCHEMA_VERSION == 6


async def test_every_server_write_path_keeps_the_object_current(
    api: Any, new_run: Any, tmp_path: Path
) -> None:
    runs = [new_run(metrics_json={"n": i, "s": "é\u2028"}) for i in range(6)]
    for run in runs[:2]:
        await api.create(run)
    reply = await api.post("/api/v1/runs/batch", json=runs[2:4])
    assert reply.body["inserted"] == 2
    patched = await api.patch(
        f"/api/v1/runs/{runs[0]['event_id']}",
        json={"status": "failure", "metrics_json": {"after": [1, 2.5]}, "items_failed": 3},
    )
    assert patched.status == 200
    linked = await api.post(
        f"/api/v1/runs/{runs[1]['event_id']}/associate-commit",
        json={"commit_hash": "abc1234", "commit_source": "manual"},
    )
    assert linked.status == 200, linked.body
    upserted = await api.post(
        UPSERT,
        json=[
            {"event_id": runs[4]["event_id"], "create": runs[4]},
            {"event_id": runs[4]["event_id"], "update": {"status": "success", "duration_ms": 9}},
            {"event_id": runs[2]["event_id"], "update": {"context_json": {"c": None}}},
            {"event_id": runs[5]["event_id"], "create": runs[5]},
        ],
    )
    assert upserted.status == 200, upserted.body
    reply = await api.get("/api/v1/runs", params={"limit": "100"})
    conn = open_reader(tmp_path / "t.sqlite", busy_timeout_ms=2000)
    try:
        assert_consistent(conn, all_exact=True)
        assert reply.text.encode() == python_page(conn, RunQuery(limit=100), None)
        stored = {run["event_id"]: run for run in orjson.loads(reply.text)}
        assert stored[runs[0]["event_id"]]["metrics_json"] == {"after": [1, 2.5]}
        assert stored[runs[1]["event_id"]]["git_commit_hash"] == "abc1234"
        assert stored[runs[4]["event_id"]]["duration_ms"] == 9
        assert stored[runs[2]["event_id"]]["context_json"] == {"c": None}
    finally:
        conn.close()


def test_rows_written_and_updated_by_other_writers(tmp_path: Path) -> None:
    """Raw SQL, hostile values included: SQLite recomputes the object on every write,
    and an object it cannot render exactly is NULL (the row goes the Python way)."""
    path = tmp_path / "raw.sqlite"
    writer = sqlite3.connect(path, isolation_level=None)
    migrate(writer)
    writer.execute("BEGIN")
    writer.executemany(_INSERT_SQL, list(hostile_rows(random.Random(5))))
    writer.execute("COMMIT")
    reader = open_reader(path, busy_timeout_ms=2000)
    try:
        assert_consistent(reader, all_exact=False)
        exact_before = sum(body is not None for body in stored_objects(reader).values())
        # foreign text into exact rows, exact text into foreign rows, counters to reals
        rng = random.Random(6)
        ids = [row[0] for row in writer.execute("SELECT id FROM agent_runs")]
        writer.execute("BEGIN")
        for row_id in rng.sample(ids, 300):
            column = rng.choice(("metrics_json", "context_json"))
            value = rng.choice((*FOREIGN_JSON, '{"ok":[1,{}]}', None))
            writer.execute(f"UPDATE agent_runs SET {column} = ? WHERE id = ?", (value, row_id))
        writer.execute("UPDATE agent_runs SET items_failed = 2.5 WHERE id % 17 = 0")
        writer.execute("UPDATE agent_runs SET status = 'partial', end_time = 'x' WHERE id % 5 = 0")
        writer.execute("COMMIT")
        assert_consistent(reader, all_exact=False)
        objects = stored_objects(reader)
        assert sum(body is not None for body in objects.values()) != exact_before
        assert any(body is None for body in objects.values())
    finally:
        reader.close()
        writer.close()


def test_an_older_servers_database_is_migrated(tmp_path: Path) -> None:
    """A version-4 file (rows, ids, statistics) gets the stored objects; its rows,
    ids, indexes and answers stay; a fresh file and a migrated one have one schema."""
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:4]:
        for statement in migration.statements:
            old.execute(statement)
    old.execute("PRAGMA user_version = 4")
    old.execute("BEGIN")
    old.executemany(_OLD_INSERT_SQL, old_rows(random.Random(7)))
    old.execute("DELETE FROM agent_runs WHERE id % 7 = 0")  # ids with holes
    old.execute("COMMIT")
    old.execute("ANALYZE")
    renderable = old.execute(
        f"SELECT count(*) FROM agent_runs WHERE ({schema.rendered_run_sql(schema._V5_COLUMNS)})"
        " NOT NULL"
    ).fetchone()[0]
    before = old.execute(  # migration 6 adds last_seen_at = COALESCE(updated_at, created_at)
        f"SELECT id, {', '.join(schema._V5_COLUMNS)}, NULL, COALESCE(updated_at, created_at)"
        " FROM agent_runs ORDER BY id"
    ).fetchall()
    assert migrate(old)[:2] == [5, 6]  # then the later ones
    after = old.execute(
        f"SELECT id, {', '.join(c for c in RUN_COLUMNS if c not in _NEW)}, heartbeat_timeout_s,"
        " last_seen_at FROM agent_runs ORDER BY id"
    ).fetchall()
    assert after == before
    assert old.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    fresh = sqlite3.connect(tmp_path / "fresh.sqlite", isolation_level=None)
    migrate(fresh)
    schema_sql = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%' ORDER BY name"
    assert old.execute(schema_sql).fetchall() == fresh.execute(schema_sql).fetchall()
    fresh.close()
    reader = open_reader(path, busy_timeout_ms=2000)
    try:
        assert_consistent(reader, all_exact=False)
        exact = sum(body is not None for body in stored_objects(reader).values())
        assert exact == renderable > 100
    finally:
        reader.close()
        old.close()


@pytest.mark.parametrize("interrupted_at", [1, 3])
def test_an_interrupted_migration_changes_nothing(tmp_path: Path, interrupted_at: int) -> None:
    """The rebuild runs in one transaction: a failure part way leaves version 4 whole."""
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:4]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    conn.executemany(_OLD_INSERT_SQL, old_rows(random.Random(8))[:50])
    broken = (*MIGRATIONS[4].statements[:interrupted_at], "SELECT no_such_function()")
    patched = (*MIGRATIONS[:4], schema.Migration(5, "broken", broken))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(schema, "MIGRATIONS", patched)
        with pytest.raises(sqlite3.OperationalError):
            schema.migrate(conn)
    assert schema.current_version(conn) == 4
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "agent_runs_v5" not in names
    assert conn.execute("SELECT count(*) FROM agent_runs").fetchone()[0] == 50
    assert migrate(conn)[:2] == [5, 6]  # then the later ones
    assert conn.execute("SELECT count(*) FROM agent_runs WHERE run_json IS NOT NULL").fetchone()[0]
    conn.close()


def test_blob_values_from_another_writer_neither_block_the_migration_nor_an_answer(
    tmp_path: Path,
) -> None:
    """A BLOB in any column (only another writer can put one there): json_object()
    refuses BLOBs, so such a row must render NULL (the Python way), not fail the
    migration (the server would never start) or a later write; its answer has the
    bytes as text."""
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:4]:
        for statement in migration.statements:
            old.execute(statement)
    old.execute("PRAGMA user_version = 4")
    old.executemany(_OLD_INSERT_SQL, old_rows(random.Random(9))[:20])
    old.execute("UPDATE agent_runs SET host = CAST('h\u00e9' AS BLOB) WHERE id = 2")
    old.execute("UPDATE agent_runs SET metrics_json = CAST('{}' AS BLOB) WHERE id = 3")
    old.execute("UPDATE agent_runs SET items_failed = x'01' WHERE id = 4")
    assert migrate(old)[:2] == [5, 6]  # then the later ones
    old.execute("UPDATE agent_runs SET product = x'ff' WHERE id = 5")  # after it, too
    reader = open_reader(path, busy_timeout_ms=2000)
    try:
        nulls = {
            row[0] for row in reader.execute("SELECT id FROM agent_runs WHERE run_json IS NULL")
        }
        assert {2, 3, 4, 5} <= nulls
        page = orjson.loads(query_page_json(reader, RunQuery(limit=100)).body)
        by_host = {run["event_id"]: run for run in page}
        (blob_host,) = [run for run in by_host.values() if run["host"] == "h\u00e9"]
        assert blob_host["product"] != "\ufffd"
        assert any(run["product"] == "\ufffd" for run in page)
        assert len(page) == 20
        assert_consistent(reader, all_exact=False)
    finally:
        reader.close()
        old.close()


def watch_fetches(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each page fetch ran inside a transaction, in order."""
    from server.storage import runs

    seen: list[bool] = []
    real_fetch = runs._fetch

    def watched(conn: sqlite3.Connection, *args: Any, **kwargs: Any) -> list[Any]:
        seen.append(conn.in_transaction)
        return real_fetch(conn, *args, **kwargs)

    monkeypatch.setattr(runs, "_fetch", watched)
    return seen


def test_a_page_with_an_inexact_row_is_read_again_whole_in_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of exact rows is one statement, no transaction; a page that needs the
    Python way for a row is read again, whole, in one snapshot. A write landing between
    the two reads must then show in every row of the page, never only in some."""
    path = tmp_path / "race.sqlite"
    writer = sqlite3.connect(path, isolation_level=None)
    migrate(writer)
    writer.execute("PRAGMA journal_mode = WAL")
    rows = list(hostile_rows(random.Random(8)))[:40]
    writer.execute("BEGIN")
    writer.executemany(_INSERT_SQL, rows)
    writer.execute("UPDATE agent_runs SET metrics_json = ? WHERE id = 3", (FOREIGN_JSON[0],))
    writer.execute("COMMIT")
    reader = open_reader(path, busy_timeout_ms=2000)
    from server.storage import runs

    real_fetch = runs._fetch
    calls: list[bool] = []

    def fetch_then_write(conn: sqlite3.Connection, *args: Any, **kwargs: Any) -> list[Any]:
        found = real_fetch(conn, *args, **kwargs)
        calls.append(conn.in_transaction)
        if len(calls) == 1:  # between the plain read and the snapshot's
            writer.execute("UPDATE agent_runs SET status = 'cancelled', duration_ms = 77")
        return found

    monkeypatch.setattr(runs, "_fetch", fetch_then_write)
    try:
        assert stored_objects(reader)  # the inexact row is there
        assert any(body is None for body in stored_objects(reader).values())
        page = orjson.loads(query_page_json(reader, RunQuery(limit=100)).body)
        assert calls == [False, True]  # plain read, then the whole page in a snapshot
        assert len(page) == len(rows)
        assert {(run["status"], run["duration_ms"]) for run in page} == {("cancelled", 77)}
        monkeypatch.setattr(runs, "_fetch", real_fetch)
        assert query_page_json(reader, RunQuery(limit=100)).body == python_page(
            reader, RunQuery(limit=100), None
        )
    finally:
        reader.close()
        writer.close()


def test_a_page_of_exact_rows_takes_no_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "exact.sqlite"
    writer = sqlite3.connect(path, isolation_level=None)
    migrate(writer)
    writer.execute("BEGIN")
    writer.executemany(_INSERT_SQL, list(hostile_rows(random.Random(9))))
    writer.execute("DELETE FROM agent_runs WHERE run_json IS NULL")  # the inexact ones
    writer.execute("COMMIT")
    reader = open_reader(path, busy_timeout_ms=2000)

    seen = watch_fetches(monkeypatch)
    try:
        assert len(stored_objects(reader)) >= 10
        body = query_page_json(reader, RunQuery(limit=100)).body
        assert seen == [False]
        assert body == python_page(reader, RunQuery(limit=100), None)
    finally:
        reader.close()
        writer.close()


def test_an_inexact_row_just_past_the_page_costs_no_second_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row fetched past the page (to know whether another follows) is never
    rendered: its having no stored object must not send the page to be read again."""
    path = tmp_path / "past.sqlite"
    writer = sqlite3.connect(path, isolation_level=None)
    migrate(writer)
    writer.execute("BEGIN")
    writer.executemany(_INSERT_SQL, list(hostile_rows(random.Random(10))))
    writer.execute("DELETE FROM agent_runs WHERE run_json IS NULL")
    writer.execute("COMMIT")
    reader = open_reader(path, busy_timeout_ms=2000)
    from server.storage import runs

    query = RunQuery(limit=5)
    # The sixth row of the list order: the one past a page of five.
    past = reader.execute(*runs.query_sql(query, None, "created_at"))
    past_id = past.fetchall()[5][-1]
    writer.execute(
        "UPDATE agent_runs SET metrics_json = ? WHERE id = ?", (FOREIGN_JSON[0], past_id)
    )
    seen = watch_fetches(monkeypatch)
    try:
        assert stored_objects(reader)
        assert reader.execute(
            "SELECT run_json IS NULL FROM agent_runs WHERE id = ?", (past_id,)
        ).fetchone() == (1,)
        page = query_page_json(reader, query)
        assert seen == [False]
        assert page.next_position is not None
        assert page.body == python_page(reader, query, None)
        assert len(orjson.loads(page.body)) == 5
    finally:
        reader.close()
        writer.close()
