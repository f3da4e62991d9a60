"""Read what the server stored, on a connection of its own, whichever backend it runs on.

The handler tests of tests/server run on SQLite and again on PostgreSQL (tests/postgres);
a test that checks stored state reads it through ``fetch`` and holds on both. Both
backends keep the same columns in the same stored forms (text timestamps, integer
counters), so one plain SELECT answers the same rows on either. Parameters are written
``?`` (SQLite's style); they become ``$1, $2, ...`` on PostgreSQL.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from server.http.runs import DATABASE
from server.postgres.database import PostgresDatabase


def is_postgres(api: Any) -> bool:
    """Whether the app behind ``api`` (tests/conftest.py's ``Api``) runs on PostgreSQL."""
    return isinstance(api.client.app[DATABASE], PostgresDatabase)


def _numbered(sql: str) -> str:
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


async def fetch(api: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of one SELECT on the app's database, as tuples."""
    store = api.client.app[DATABASE]
    if isinstance(store, PostgresDatabase):
        async with store.pool.acquire() as conn:
            return [tuple(row) for row in await conn.fetch(_numbered(sql), *params)]
    conn = sqlite3.connect(store.settings.path)
    try:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def location(api: Any) -> tuple[str, str]:
    """Where /health and /metrics (with the token) say the database is, by backend: the
    SQLite file (``db_path``) or PostgreSQL's URL without its password (``database_url``)."""
    store = api.client.app[DATABASE]
    if isinstance(store, PostgresDatabase):
        return "database_url", str(store.settings.url.redacted)
    return "db_path", str(store.settings.path)
