"""A multi-host URL as operators write it for a primary and its standbys: the backend
opens on the first host that has the asked attributes, skipping one that refuses, and a
list where none has them is one clear start-up line (no password), not a traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pg_cluster
import pytest

from server.contract.models import RunCreate
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.errors import CannotOpen
from server.postgres.url import parse_url


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


def _hosts(url: str, cluster: pg_cluster.Cluster, first: int, attrs: str) -> str:
    """``url`` with a host before the cluster's, and ``target_session_attrs``."""
    alive = f"@127.0.0.1:{cluster.port}/"
    assert alive in url
    return url.replace(alive, f"@127.0.0.1:{first},127.0.0.1:{cluster.port}/") + (
        f"&target_session_attrs={attrs}"
    )


def _run(event_id: str) -> RunCreate:
    return RunCreate.model_validate(
        {
            "event_id": event_id,
            "run_id": "r",
            "agent_name": "a",
            "job_type": "j",
            "start_time": "2026-03-01T11:00:00Z",
        }
    )


async def test_a_dead_first_host_is_skipped_for_the_writable_one(
    pg_url: str, postgres_cluster: pg_cluster.Cluster, dead_port: int
) -> None:
    url = parse_url(_hosts(pg_url, postgres_cluster, dead_port, "read-write"))
    db = await PostgresDatabase.open(PostgresSettings(url=url, pool_size=2))
    try:
        assert await db.create(_run("multi-1"))
        assert (await db.get("multi-1") or {})["event_id"] == "multi-1"
        # every connection of the pool went the same way (several at once)
        async with db.pool.acquire() as a, db.pool.acquire() as b:
            ports = {await conn.fetchval("SELECT inet_server_port()") for conn in (a, b)}
        assert ports == {postgres_cluster.port}
    finally:
        await db.close()


@pytest.mark.parametrize("attrs", ["read-only", "standby"])
async def test_no_host_with_the_asked_attributes_is_one_line_without_the_password(
    pg_url: str, postgres_cluster: pg_cluster.Cluster, dead_port: int, attrs: str
) -> None:
    """Only a primary is up: a URL asking for a standby cannot open, and says which URL."""
    url = parse_url(_hosts(pg_url, postgres_cluster, dead_port, attrs))
    with pytest.raises(CannotOpen) as caught:
        await PostgresDatabase.open(PostgresSettings(url=url, connect_timeout_s=5))
    message = str(caught.value)
    assert postgres_cluster.password not in message
    assert url.redacted in message
    assert "\n" not in message
    # asyncpg raises the dead host's refusal: the line says the live one was not a standby
    assert f"none of its 2 hosts was usable as target_session_attrs={attrs}" in message
