"""The list indexes of ``agent_runs`` set aside during a bulk copy into an empty table
(``import_sqlite``): a table without them takes rows ~2.5x faster, and one index made
over all the rows at the end costs seconds per million. The definitions are kept in
``server_meta`` in the transaction that drops them, so a copy killed before ``restore``
leaves the next one the means to make them (``CREATE INDEX IF NOT EXISTS``: those made
before the kill are skipped). Indexes behind a constraint (the id, the event_id) stay:
they are what keeps a row from being doubled.
"""

from __future__ import annotations

from typing import Any

import orjson

#: A first copy of at least this many runs loads without the list indexes and makes
#: them at the end (bench/pg_migrate_bench.py, 1M runs on a loaded 2-core machine:
#: 345 s with the indexes kept, 161 s deferred; COPY alone ~2.5x faster without them).
BULK_ROWS = 20_000
#: maintenance_work_mem while the indexes are made (the sorts stay in memory).
INDEX_MEMORY = "256MB"


async def defer(conn: Any, key: str) -> None:
    """Drop the list indexes (every one not behind a constraint) for a bulk copy, their
    definitions kept in ``server_meta`` under ``key``, in the caller's transaction."""
    found = await conn.fetch(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
        " WHERE indrelid = 'agent_runs'::regclass AND NOT indisunique ORDER BY 1"
    )
    for name, _ in found:
        await conn.execute(f"DROP INDEX {name}")
    await conn.execute(
        "INSERT INTO server_meta (key, value) VALUES ($1, $2)",
        key,
        orjson.dumps([definition for _, definition in found]),
    )


async def restore(conn: Any, pattern: str) -> None:
    """Make again the indexes ``defer`` dropped under every key ``LIKE pattern`` (those
    made already, before a kill, are skipped), then forget them. Every key, not only
    this source's: a copy from another file killed before its first batch leaves the
    table empty (so this one was allowed) and its indexes set aside; this copy's
    ``defer`` then found none left to set aside."""
    found = await conn.fetch(
        "SELECT key, value FROM server_meta WHERE key LIKE $1 ORDER BY key", pattern
    )
    if not found:
        return
    await conn.execute(f"SET maintenance_work_mem = '{INDEX_MEMORY}'")
    for key, value in found:
        for definition in orjson.loads(bytes(value)):
            await conn.execute(
                definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
            )
        await conn.execute("DELETE FROM server_meta WHERE key = $1", key)
