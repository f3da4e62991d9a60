"""A target left by a migrate from another SQLite file, killed after its first
transaction (marker and list indexes set aside) but before its first batch committed:
the table is empty, so a migrate from a different file is allowed, and it must leave
the target with every list index (the ones the first migrate set aside included)."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from migrate_helpers import fill, migrate_command, new_database, scalar

from server.postgres import bulk_indexes, import_sqlite
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.schema import MIGRATIONS
from server.postgres.url import parse_url
from server.storage.dump import Dump

_LIST_INDEXES = {
    match.group(1)
    for migration in MIGRATIONS
    for statement in migration.statements
    if (match := re.match(r"CREATE INDEX (\w+) ON agent_runs", statement))
}


async def _indexes(url: str) -> set[str]:
    found = await scalar(
        url,
        "SELECT array_agg(indexname::text) FROM pg_indexes"
        " WHERE tablename = 'agent_runs' AND schemaname = current_schema()",
    )
    return set(found or [])


async def test_a_partial_run_from_another_file_leaves_no_index_missing(
    tmp_path: Path, pg_url: str
) -> None:
    first = tmp_path / "first.sqlite"
    await new_database(first)
    fill(first, bulk_indexes.BULK_ROWS)
    # The state a kill -9 leaves right after the first transaction of a bulk copy:
    # the marker at 0 and the list indexes dropped, no run copied yet.
    url = parse_url(pg_url)
    dump = Dump.open(first)
    conn = await import_sqlite.connect(url)
    try:
        await import_sqlite._prepare(conn, url)
        assert await import_sqlite._start(conn, dump) == 0
    finally:
        await conn.close()
        dump.close()
    assert not (_LIST_INDEXES & await _indexes(pg_url)), "the bulk copy set them aside"

    second = tmp_path / "second.sqlite"
    await new_database(second)
    fill(second, 500)
    result = migrate_command(second, pg_url)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout.strip().splitlines()[-1])["verified"] is True
    assert await scalar(pg_url, "SELECT count(*) FROM agent_runs") == 500
    assert await _indexes(pg_url) >= _LIST_INDEXES
    assert await scalar(pg_url, "SELECT count(*) FROM server_meta WHERE key LIKE '%:indexes'") == 0


async def test_a_replica_already_serving_the_empty_target_does_not_block_migrate(
    tmp_path: Path, pg_url: str
) -> None:
    """Replicas started on the new database before the copy (compose brings them up
    first): the one leading the background work holds its advisory lock, which is not
    the migrate's ("another migrate is running" would be false)."""
    source = tmp_path / "t.sqlite"
    await new_database(source)
    fill(source, 200)
    database = await PostgresDatabase.open(PostgresSettings(url=parse_url(pg_url)))
    try:
        assert await database.leadership.lead()
        result = migrate_command(source, pg_url)
        assert result.returncode == 0, result.stderr
        assert orjson.loads(result.stdout.strip().splitlines()[-1])["verified"] is True
        assert await database.leadership.lead(), "the replica still leads"
    finally:
        await database.close()
