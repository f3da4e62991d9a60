"""PostgreSQL backend tests: one throwaway cluster per session (``pg_cluster``), a fresh
database per test. Every test here is marked ``postgres`` (select with ``-m postgres``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pg_cluster
import pytest

from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.url import parse_url
from server.storage.database import Database, StorageSettings

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[pg_cluster.Cluster]:
    cluster = pg_cluster.Cluster.start(pg_cluster.require_postgres())
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(postgres_cluster: pg_cluster.Cluster) -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    name = postgres_cluster.new_database()
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.drop_database(name)


@pytest.fixture
async def pgdb(pg_url: str) -> AsyncIterator[PostgresDatabase]:
    """The PostgreSQL backend, migrated, on a fresh database."""
    database = await PostgresDatabase.open(PostgresSettings(url=parse_url(pg_url)))
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
