"""``telemetry-server migrate --from sqlite:PATH --to postgresql://...`` as an operator runs
it (a real subprocess): it copies, resumes, verifies, and refuses what it must with one
line and a non-zero exit, never showing the password."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from migrate_helpers import execute, fill, migrate_command, new_database, scalar, target_rows
from ports import free_port

from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.digest import AgentDigests, read_digests
from server.postgres.import_sqlite import stored_row
from server.postgres.url import parse_url
from server.storage.dump import ROW_COLUMNS, Dump
from server.storage.schema import SCHEMA_VERSION


def _summary(result: Any) -> dict[str, Any]:
    return dict(orjson.loads(result.stdout.strip().splitlines()[-1]))


def _one_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("telemetry-server")]
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_copies_and_verifies(tmp_path: Path, pg_url: str) -> None:
    """Every run arrives with its id and every column (NUL text, emoji included); a second
    run copies nothing and verifies again; the ids go on after the largest."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 3000)
    result = migrate_command(source, pg_url, "--batch-rows", "700")
    assert result.returncode == 0, result.stderr
    summary = _summary(result)
    assert summary["verified"] is True
    assert (summary["copied"], summary["source_runs"], summary["target_runs"]) == (3000,) * 3
    dump = Dump.open(source)
    try:
        expected = [stored_row(row) for rows in dump.all_runs() for row in rows]
    finally:
        dump.close()
    found = await target_rows(pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        names = [
            r[0]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'agent_runs' AND table_schema = current_schema()"
                " ORDER BY ordinal_position"
            )
        ]
    finally:
        await conn.close()
    order = [names.index(column) for column in ROW_COLUMNS]
    assert [tuple(row[i] for i in order) for row in found] == expected
    again = migrate_command(source, pg_url)
    assert again.returncode == 0, again.stderr
    assert _summary(again)["copied"] == 0
    postgres = await PostgresDatabase.open(PostgresSettings(url=parse_url(pg_url)))
    try:
        from server.contract.models import RunCreate

        created = RunCreate.model_validate(
            {
                "event_id": "after",
                "run_id": "r",
                "agent_name": "a",
                "job_type": "j",
                "start_time": "2026-03-01T00:00:00Z",
            }
        )
        assert await postgres.create(created) is True
    finally:
        await postgres.close()
    assert await scalar(pg_url, "SELECT id FROM agent_runs WHERE event_id = 'after'") == 3001


async def test_columns_are_every_stored_column(tmp_path: Path, pg_url: str) -> None:
    """What is copied is every column of both tables (but SQLite's generated run_json and
    its ``late`` flag, derived from start_time and created_at for its own indexes): a
    column added by a later migration on either side fails here until it is copied."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    conn = sqlite3.connect(source)
    try:
        lite = {row[1] for row in conn.execute("PRAGMA table_xinfo(agent_runs)")}
    finally:
        conn.close()
    assert lite - {"run_json", "late"} == set(ROW_COLUMNS)
    assert migrate_command(source, pg_url).returncode == 0
    conn2 = await asyncpg.connect(pg_url)
    try:
        pg = {
            r[0]
            for r in await conn2.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'agent_runs' AND table_schema = current_schema()"
            )
        }
    finally:
        await conn2.close()
    assert pg == set(ROW_COLUMNS)


async def test_empty_database(tmp_path: Path, pg_url: str) -> None:
    """A server database without runs (named sqlite:///ABSOLUTE as well): nothing to
    copy, verified, exit 0; a file not in WAL mode gets a warning that the copy holds
    a running server's commits."""
    source = tmp_path / "empty.sqlite"
    await new_database(source)
    result = migrate_command(f"//{source.resolve()}", pg_url)
    assert result.returncode == 0, result.stderr
    summary = _summary(result)
    assert (summary["copied"], summary["target_runs"], summary["verified"]) == (0, 0, True)
    assert "migrate_blocks_writes" not in result.stderr
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    again = migrate_command(source, pg_url)
    assert again.returncode == 0, again.stderr
    assert "migrate_blocks_writes" in again.stderr


async def test_changed_row_on_target_detected_then_resynced(tmp_path: Path, pg_url: str) -> None:
    """A row changed on the target after the copy (a bookkeeping column, the NUL text,
    a row deleted, one added) fails the verification with one line naming the agent;
    --resync puts the source's rows back and verifies."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 500, agents=10)
    assert migrate_command(source, pg_url).returncode == 0
    for change in (
        "UPDATE agent_runs SET snapshot_seq = 7 WHERE id = 10",
        "UPDATE agent_runs SET snapshot_source = 'x' WHERE id = 11",
        "UPDATE agent_runs SET error_details = error_details || ' ' WHERE id = 98",
        "UPDATE agent_runs SET metrics_json = '{\"n\":1}' WHERE id = 2",
        "DELETE FROM agent_runs WHERE id = 300",
        "UPDATE agent_runs SET reaped_at = created_at WHERE id = 400",
    ):
        await execute(pg_url, change)
        result = migrate_command(source, pg_url)
        assert result.returncode == 1, (change, result.stderr)
        line = _one_line(result)
        assert "verification failed" in line
        assert "--resync" in line
        assert "agent-" in line
        assert _summary(result)["verified"] is False
        fixed = migrate_command(source, pg_url, "--resync")
        assert fixed.returncode == 0, fixed.stderr
        assert _summary(fixed)["resynced_agents"] == 1
    assert await scalar(pg_url, "SELECT count(*) FROM agent_runs") == 500


async def test_writes_after_snapshot_need_a_second_pass(tmp_path: Path, pg_url: str) -> None:
    """Runs added to the SQLite file after a pass are copied by the next (it resumes);
    runs changed after they were copied fail the verification until --resync."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 400)
    assert migrate_command(source, pg_url).returncode == 0
    fill(source, 250, first=400)
    second = migrate_command(source, pg_url)
    assert second.returncode == 0, second.stderr
    assert _summary(second)["copied"] == 250
    conn = sqlite3.connect(source, isolation_level=None)
    try:
        conn.execute("UPDATE agent_runs SET status = 'success' WHERE id = 3")
        conn.execute("DELETE FROM agent_runs WHERE id = 5")
    finally:
        conn.close()
    third = migrate_command(source, pg_url)
    assert third.returncode == 1
    assert "verification failed" in _one_line(third)
    fixed = migrate_command(source, pg_url, "--resync")
    assert fixed.returncode == 0, fixed.stderr
    assert await scalar(pg_url, "SELECT count(*) FROM agent_runs") == 649
    assert await scalar(pg_url, "SELECT status FROM agent_runs WHERE id = 3") == "success"


async def test_target_with_other_runs_is_refused(tmp_path: Path, pg_url: str) -> None:
    """A target that already holds runs (one with an event_id the source has) is refused
    before anything is written: ids and event_ids are kept, sources are not merged."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 20)
    postgres = await PostgresDatabase.open(PostgresSettings(url=parse_url(pg_url)))
    try:
        from server.contract.models import RunCreate

        await postgres.create(
            RunCreate.model_validate(
                {
                    "event_id": "ev-0000003",
                    "run_id": "theirs",
                    "agent_name": "other",
                    "job_type": "j",
                    "start_time": "2026-03-01T00:00:00Z",
                }
            )
        )
    finally:
        await postgres.close()
    result = migrate_command(source, pg_url)
    assert result.returncode == 2
    line = _one_line(result)
    assert "already holds 1 runs" in line
    assert "empty database" in line
    assert await scalar(pg_url, "SELECT count(*) FROM agent_runs") == 1
    assert await scalar(pg_url, "SELECT run_id FROM agent_runs") == "theirs"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("missing.sqlite", "no SQLite database at"),
        ("garbage.sqlite", "not a readable SQLite database"),
        ("foreign.sqlite", "not a telemetry server database"),
        ("old.sqlite", "older than this server's"),
        ("new.sqlite", "newer than this server's"),
        ("", "names no file"),
    ],
)
async def test_bad_source_refused(tmp_path: Path, pg_url: str, source: str, expected: str) -> None:
    """A source that is absent, not SQLite, another program's, or of another schema
    version: exit 2, one line, nothing written to the target."""
    (tmp_path / "garbage.sqlite").write_bytes(b"this is not a database" * 100)
    sqlite3.connect(tmp_path / "foreign.sqlite").execute("CREATE TABLE t (x)").connection.close()
    for name, version in (("old.sqlite", SCHEMA_VERSION - 1), ("new.sqlite", SCHEMA_VERSION + 1)):
        await new_database(tmp_path / name)
        conn = sqlite3.connect(tmp_path / name)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.close()
    result = migrate_command(tmp_path / source if source else "", pg_url)
    assert result.returncode == 2, result.stderr
    assert expected in _one_line(result)
    assert await scalar(pg_url, "SELECT to_regclass('agent_runs')") is None


def test_bad_arguments(tmp_path: Path) -> None:
    """--from not sqlite:, --to not postgresql://, no --to, a batch size out of bounds:
    exit 2 with one line."""
    endpoints = ("--from", f"sqlite:{tmp_path}/a", "--to", "postgresql://h/d")
    cases = (
        (("--from", "postgres://x/y", "--to", "postgresql://h/d"), "--from must be sqlite:PATH"),
        (("--from", f"sqlite:{tmp_path}/a", "--to", "mysql://u:pw@h/d"), "scheme"),
        (("--from", f"sqlite:{tmp_path}/a"), "needs --to"),
        (("--to", "postgresql://h/d"), "needs --from"),
        (("--from", "sqlite://host/a", "--to", "postgresql://h/d"), "sqlite:///ABSOLUTE"),
        ((*endpoints, "--batch-rows", "0"), "--batch-rows must be 1 to 50,000"),
        ((*endpoints, "--batch-rows", "50001"), "--batch-rows must be 1 to 50,000"),
        ((*endpoints, "--batch-rows", "-5"), "--batch-rows must be 1 to 50,000"),
    )
    import subprocess
    import sys

    from migrate_helpers import ROOT, command_env

    for args, expected in cases:
        result = subprocess.run(
            [sys.executable, "-m", "server", "migrate", *args],
            cwd=ROOT,
            env=command_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert expected in _one_line(result), args
        assert "pw" not in result.stderr.replace("password", "")


async def test_unreachable_or_refusing_target(
    tmp_path: Path, pg_url: str, postgres_cluster: Any
) -> None:
    """A wrong password, a port nobody listens on, a database that does not exist:
    exit 2, one line naming the URL with the password as ***, never the password."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 5)
    right = postgres_cluster.password
    wrong_password = pg_url.replace(right, "Wr0ngSecret-xyz")
    no_database = postgres_cluster.url("no_such_database_here")
    free = free_port()
    no_server = f"postgresql://telemetry:{right}@127.0.0.1:{free}/tests"
    for url, secret in (
        (wrong_password, "Wr0ngSecret-xyz"),
        (no_database, right),
        (no_server, right),
    ):
        result = migrate_command(source, url)
        assert result.returncode == 2, (url, result.stderr)
        line = _one_line(result)
        assert "***" in line
        assert secret not in result.stderr + result.stdout


async def test_target_with_newer_schema_refused(tmp_path: Path, pg_url: str) -> None:
    """A target migrated by a newer server is not touched: exit 2, one line."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 5)
    assert migrate_command(source, pg_url).returncode == 0
    await execute(
        pg_url, "INSERT INTO schema_migrations (version, description) VALUES (99, 'future')"
    )
    fill(source, 5, first=5)
    result = migrate_command(source, pg_url)
    assert result.returncode == 2
    assert "newer than this server's" in _one_line(result)
    assert await scalar(pg_url, "SELECT count(*) FROM agent_runs") == 5


async def test_foreign_value_stops_the_copy_resumably(tmp_path: Path, pg_url: str) -> None:
    """A value PostgreSQL cannot hold (a BLOB another program wrote) stops the copy at its
    batch with one line naming the run; the batches before it stay, marked; once the
    value is fixed the next run goes on from there and verifies."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 1000)
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("UPDATE agent_runs SET error_details = x'00ff' WHERE id = 650")
    conn.close()
    result = migrate_command(source, pg_url, "--batch-rows", "100")
    assert result.returncode == 1
    line = _one_line(result)
    assert "run id 650" in line
    assert "error_details" in line
    assert "run migrate again" in line
    assert await scalar(pg_url, "SELECT count(*) FROM agent_runs") == 600
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("UPDATE agent_runs SET error_details = 'fixed' WHERE id = 650")
    conn.close()
    again = migrate_command(source, pg_url, "--batch-rows", "100")
    assert again.returncode == 0, again.stderr
    assert _summary(again)["copied"] == 400


async def test_digests_are_the_same_both_sides(tmp_path: Path, pg_url: str) -> None:
    """The Python digest of the SQLite rows equals PostgreSQL's SQL one on hostile values
    (NUL, the marker, multi-byte text, huge JSON, 2^63-1, NULL everywhere it may be)."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 300, agents=3)
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute(
        "UPDATE agent_runs SET error_details = ?, git_branch = ?, metrics_json = ?,"
        " snapshot_source = 'spool:1', snapshot_seq = ?, heartbeat_timeout_s = 5 WHERE id = 7",
        ("\uffff\x00x", "中文🚀", orjson.dumps({"x": "y" * 3_000_000}).decode(), 2**63 - 1),
    )
    conn.close()
    assert migrate_command(source, pg_url).returncode == 0
    dump = Dump.open(source)
    try:
        ours = AgentDigests()
        for rows in dump.all_runs():
            ours.add(stored_row(row) for row in rows)
    finally:
        dump.close()
    pg = await asyncpg.connect(pg_url)
    try:
        assert await read_digests(pg) == ours.result()
    finally:
        await pg.close()


async def test_rows_already_there_are_not_doubled(tmp_path: Path, pg_url: str) -> None:
    """A marker behind the rows the target holds (as if a batch committed without it)
    makes the next run meet every row again: none is doubled, it verifies."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 1200)
    assert migrate_command(source, pg_url, "--batch-rows", "500").returncode == 0
    await execute(pg_url, "DELETE FROM agent_runs WHERE id IN (700, 701)")
    await execute(
        pg_url,
        "UPDATE server_meta SET value = convert_to('{\"last_id\":0}', 'UTF8')"
        " WHERE key LIKE 'migrate:sqlite:%'",
    )
    again = migrate_command(source, pg_url, "--batch-rows", "500")
    assert again.returncode == 0, again.stderr
    assert _summary(again)["copied"] == 2
    assert await scalar(pg_url, "SELECT count(*) FROM agent_runs") == 1200
    assert await scalar(pg_url, "SELECT count(DISTINCT event_id) FROM agent_runs") == 1200


async def test_second_migrate_at_once_refused(tmp_path: Path, pg_url: str) -> None:
    """While one migrate holds the target (its advisory lock), another is refused with
    one line and writes nothing."""
    from server.postgres.import_sqlite import MIGRATE_LOCK

    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 10)
    holder = await asyncpg.connect(pg_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1, $2)", *MIGRATE_LOCK)
        result = migrate_command(source, pg_url)
        assert result.returncode == 2
        assert "another migrate into" in _one_line(result)
    finally:
        await holder.close()
    assert await scalar(pg_url, "SELECT to_regclass('agent_runs')") is None
    assert migrate_command(source, pg_url).returncode == 0


async def test_resync_of_an_agent_stored_encoded(tmp_path: Path, pg_url: str) -> None:
    """An agent whose name PostgreSQL stores encoded (it starts with U+FFFF) is found
    on both sides by --resync: its changed run is put back."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 30)
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("UPDATE agent_runs SET agent_name = '\uffffagent' WHERE id <= 3")
    conn.close()
    assert migrate_command(source, pg_url).returncode == 0
    await execute(pg_url, "UPDATE agent_runs SET items_failed = 99 WHERE id = 2")
    result = migrate_command(source, pg_url)
    assert result.returncode == 1
    fixed = migrate_command(source, pg_url, "--resync")
    assert fixed.returncode == 0, fixed.stderr
    assert await scalar(pg_url, "SELECT items_failed FROM agent_runs WHERE id = 2") == 0
