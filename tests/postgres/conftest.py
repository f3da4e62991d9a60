"""PostgreSQL backend tests: one throwaway cluster per session (``postgres_cluster``, in
tests/conftest.py: tests/fuzz uses it too), a fresh schema per test. Every test here is marked ``postgres`` (select with ``-m postgres``)."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pg_cluster
import pytest
import server_suite

from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.schema import migrate
from server.postgres.url import parse_url
from server.storage.database import Database, StorageSettings

_HERE = Path(__file__).resolve().parent
_SCHEMAS = itertools.count(1)
# The tests of tests/server are collected again here, on PostgreSQL
# (test_pg_server_suite.py imports them by their unique basenames; server_suite.py says which).
_SERVER_TESTS = str(_HERE.parent / "server")
if _SERVER_TESTS not in sys.path:
    sys.path.append(_SERVER_TESTS)
# The real-process helpers (tests/integration/daemons.py) for the server subprocess tests.
_INTEGRATION = str(_HERE.parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.append(_INTEGRATION)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.postgres)
    kept, left = server_suite.deselect(items)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture
async def pg_url(
    postgres_cluster: pg_cluster.Cluster, postgres_database: str
) -> AsyncIterator[str]:
    """The URL of a fresh, empty schema (``?search_path=``: every table the backend makes
    or reads is there), dropped after the test. A schema costs a fraction of a fresh
    database (CREATE DATABASE with fsync on: ~0.4 s here); tests that need a whole
    database of their own use ``Cluster.new_database``."""
    url = postgres_cluster.url(postgres_database)
    schema = f"s_{os.getpid()}_{next(_SCHEMAS)}"
    admin = await asyncpg.connect(url, timeout=10)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{url}?search_path={schema}"
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def migrated_schema(postgres_cluster: pg_cluster.Cluster, postgres_database: str) -> str:
    """A schema migrated once for the session, emptied before each test that uses it
    (``pg_migrated_url``): most tests need the tables, not a migration of their own."""
    url = f"{postgres_cluster.url(postgres_database)}?search_path=migrated"

    async def make() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute("CREATE SCHEMA migrated")
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(make())
    return url


@pytest.fixture
async def pg_migrated_url(migrated_schema: str) -> str:
    """The URL of the session's migrated schema, its tables emptied (as if new)."""
    conn = await asyncpg.connect(migrated_schema, timeout=10)
    try:
        await conn.execute(
            "DELETE FROM agent_runs; DELETE FROM sidecars;"
            " DELETE FROM run_agent_names; DELETE FROM run_job_types;"
            " DELETE FROM rate_limit_pools; DELETE FROM rate_limit_leases;"
            " DELETE FROM rate_limit_replicas"
        )
    finally:
        await conn.close()
    return migrated_schema


@pytest.fixture
async def pgdb(pg_migrated_url: str) -> AsyncIterator[PostgresDatabase]:
    """The PostgreSQL backend on empty tables."""
    database = await PostgresDatabase.open(PostgresSettings(url=parse_url(pg_migrated_url)))
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def sqlitedb(tmp_path: Path) -> AsyncIterator[Database]:
    """The SQLite backend on a fresh file: the reference the PostgreSQL one must match."""
    database = Database.open(StorageSettings(path=tmp_path / "reference.sqlite"))
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def make_api(
    make_api: Callable[..., Awaitable[Any]], pg_migrated_url: str
) -> Callable[..., Awaitable[Any]]:
    """The real app (tests/conftest.py's ``make_api``) on PostgreSQL: its config names
    the database (``database_url``, as TELEMETRY_DATABASE_URL does), so the app factory
    opens the PostgreSQL backend and every endpoint, the reaper and the caches run on it.
    ``make_api.sqlite(db_path=...)``: the same app on SQLite (give it a file of its own),
    for tests that compare the two."""

    async def make(**overrides: Any) -> Any:
        return await make_api(**{"database_url": pg_migrated_url, **overrides})

    make.sqlite = make_api  # type: ignore[attr-defined]  # the reference: all on SQLite
    return make
