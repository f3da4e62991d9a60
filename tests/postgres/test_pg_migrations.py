"""PostgreSQL migrations: from empty, again (nothing to do), by several replicas at once
(one migrates, the others wait and find the work done), a failing migration undone whole,
a newer database refused; and the table holds every field of the run record."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pg_cluster
import pytest
from structlog.testing import capture_logs

from server.contract.run_record import RUN_COLUMNS
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.errors import CannotOpen
from server.postgres.schema import (
    MIGRATION_LOCK,
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    MigrationLockTimeout,
    SchemaTooNew,
    current_version,
    migrate,
)
from server.postgres.url import parse_url
from server.storage.cursor import Position


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=10)


async def test_migrates_from_empty_then_has_nothing_to_do(pg_url: str) -> None:
    conn = await _connect(pg_url)
    try:
        assert await current_version(conn) == 0
        assert await migrate(conn) == [m.version for m in MIGRATIONS]
        assert await current_version(conn) == SCHEMA_VERSION
        key = await conn.fetchval("SELECT value FROM server_meta WHERE key = 'cursor_key'")
        assert await migrate(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)
        # The cursor key is made once: re-running keeps cursors valid across restarts.
        assert await conn.fetchval("SELECT value FROM server_meta") == key
        assert len(key) == 32
        # Nothing holds the migration lock afterwards.
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *MIGRATION_LOCK)
    finally:
        await conn.close()


async def test_replicas_starting_at_once_migrate_once(pg_url: str) -> None:
    """Five servers open one empty database together: exactly one applies each
    migration; all of them then serve, with the same cursor key."""
    settings = PostgresSettings(url=parse_url(pg_url), pool_size=2)
    opened = await asyncio.gather(*(PostgresDatabase.open(settings) for _ in range(5)))
    try:
        position = Position("2026-01-01T00:00:00.000000+00:00", 1)
        assert len({db.cursors.encode(position, "scope") for db in opened}) == 1
        conn = await _connect(pg_url)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [row[0] for row in rows] == [m.version for m in MIGRATIONS]
        finally:
            await conn.close()
    finally:
        await asyncio.gather(*(db.close() for db in opened))


async def test_two_migrators_one_waits_for_the_other(pg_url: str) -> None:
    """While one server holds the migration lock, another waits (bounded), then
    migrates; the first then finds nothing left to do."""
    first, second = await _connect(pg_url), await _connect(pg_url)
    try:
        await first.execute("SELECT pg_advisory_lock($1, $2)", *MIGRATION_LOCK)
        waiting = asyncio.ensure_future(migrate(second, lock_wait_s=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await first.execute("SELECT pg_advisory_unlock($1, $2)", *MIGRATION_LOCK)
        assert await asyncio.wait_for(waiting, 30) == [m.version for m in MIGRATIONS]
        assert await migrate(first) == []
    finally:
        await first.close()
        await second.close()


async def test_the_lock_wait_is_bounded(pg_url: str) -> None:
    holder, waiter = await _connect(pg_url), await _connect(pg_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1, $2)", *MIGRATION_LOCK)
        with pytest.raises(MigrationLockTimeout):
            await migrate(waiter, lock_wait_s=0.2)
        assert await current_version(waiter) == 0
    finally:
        await holder.close()
        await waiter.close()


async def test_a_failing_migration_is_undone_whole_and_resumed_later(pg_url: str) -> None:
    broken = (
        *MIGRATIONS,
        Migration(
            SCHEMA_VERSION + 1,
            "half of it would work",
            ("CREATE TABLE half_done (x int)", "SELECT * FROM no_such_table"),
        ),
    )
    conn = await _connect(pg_url)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate(conn, broken)
        assert await current_version(conn) == SCHEMA_VERSION  # the good ones stay
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        # the lock was released: another attempt proceeds
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_a_database_from_a_newer_server_is_refused(pg_url: str) -> None:
    conn = await _connect(pg_url)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO schema_migrations (version, description) VALUES ($1, 'future')",
            SCHEMA_VERSION + 1,
        )
        with pytest.raises(SchemaTooNew, match="newer"):
            await migrate(conn)
        with pytest.raises(CannotOpen, match="newer than this server") as caught:
            await PostgresDatabase.open(PostgresSettings(url=parse_url(pg_url)))
        assert isinstance(caught.value.__cause__, SchemaTooNew)
    finally:
        await conn.close()


async def test_the_table_holds_the_run_record_in_byte_order_text(pg_url: str) -> None:
    conn = await _connect(pg_url)
    try:
        await migrate(conn)
        columns = {
            row["column_name"]: row
            for row in await conn.fetch(
                "SELECT column_name, data_type, collation_name FROM information_schema.columns"
                " WHERE table_name = 'agent_runs' AND table_schema = current_schema()"
            )
        }
    finally:
        await conn.close()
    assert set(RUN_COLUMNS) <= set(columns)
    texts = [row for row in columns.values() if row["data_type"] == "text"]
    assert len(texts) > 30
    # SQLite compares text byte by byte; so does "C", whatever the database's locale.
    assert {row["collation_name"] for row in texts} == {"C"}


async def test_a_database_not_in_utf8_is_refused_before_any_change(
    postgres_cluster: pg_cluster.Cluster,
) -> None:
    name = f"ascii_{os.getpid()}"
    postgres_cluster.psql(
        f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
        " TEMPLATE template0"
    )
    try:
        url = postgres_cluster.url(name)
        with pytest.raises(CannotOpen, match="SQL_ASCII") as caught:
            await PostgresDatabase.open(PostgresSettings(url=parse_url(url)))
        assert postgres_cluster.password not in str(caught.value)
        conn = await _connect(url)
        try:
            assert await current_version(conn) == 0
        finally:
            await conn.close()
    finally:
        postgres_cluster.drop_database(name)


async def test_opening_logs_the_database_without_its_password(
    postgres_cluster: pg_cluster.Cluster, pg_url: str
) -> None:
    with capture_logs() as logs:
        database = await PostgresDatabase.open(PostgresSettings(url=parse_url(pg_url)))
        await database.close()
    opened = [event for event in logs if event["event"] == "db_opened"]
    assert len(opened) == 1
    assert opened[0]["database"].startswith(f"postgresql://{pg_cluster.SUPERUSER}:***@")
    assert opened[0]["migrations_applied"] == [m.version for m in MIGRATIONS]
    assert postgres_cluster.password not in repr(logs)
