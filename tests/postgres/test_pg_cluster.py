"""The test cluster itself: an unprivileged user, 127.0.0.1 only, fsync on, fresh
databases that share nothing."""

from __future__ import annotations

import os
import subprocess

import asyncpg
import pg_cluster
import pytest


async def test_the_cluster_runs_unprivileged_with_fsync_on_loopback_only(
    postgres_cluster: pg_cluster.Cluster, pg_url: str
) -> None:
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "listen_addresses", "data_directory")
        }
        encoding = await conn.fetchval("SHOW server_encoding")
    finally:
        await conn.close()
    assert settings["fsync"] == "on"
    assert settings["synchronous_commit"] == "on"
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["data_directory"] == str(postgres_cluster.data)
    assert encoding == "UTF8"
    owner = os.stat(postgres_cluster.data).st_uid
    uid = os.stat(f"/proc/{postgres_cluster.process.pid}").st_uid
    assert uid == owner
    if os.geteuid() == 0:
        assert uid != 0, "PostgreSQL must not run as root"


async def test_each_test_schema_and_database_is_fresh_and_separate(
    postgres_cluster: pg_cluster.Cluster, pg_url: str
) -> None:
    other = postgres_cluster.new_database("other")
    try:
        first = await asyncpg.connect(pg_url, timeout=10)
        second = await asyncpg.connect(postgres_cluster.url(other), timeout=10)
        try:
            await first.execute("CREATE TABLE only_here (x int)")
            assert await second.fetchval("SELECT to_regclass('only_here')") is None
            assert await first.fetchval("SELECT to_regclass('only_here')") is not None
            assert await first.fetchval("SELECT current_schema()") != "public"
        finally:
            await first.close()
            await second.close()
    finally:
        postgres_cluster.drop_database(other)


def test_missing_binaries_skip_locally_but_fail_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_cluster, "bin_dir", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        pg_cluster.require_postgres()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        pg_cluster.require_postgres()


@pytest.mark.slow
def test_a_cluster_left_by_a_dead_session_is_stopped_by_the_next_one() -> None:
    """A pytest killed by a timeout cannot stop its cluster; the next session's start does,
    and leaves the clusters of live sessions (this one's included) alone."""
    orphan = pg_cluster.Cluster.start(pg_cluster.require_postgres())
    try:
        finished = subprocess.Popen(["true"])
        finished.wait(timeout=10)
        (orphan.root / "owner.pid").write_text(str(finished.pid))
        live = pg_cluster.Cluster.start(pg_cluster.require_postgres())
        try:
            assert orphan.process.wait(timeout=30) is not None, "the orphan still runs"
            assert not orphan.root.exists()
            assert live.process.poll() is None, "a live session's cluster was stopped"
            assert live.wait_ready()
        finally:
            live.destroy()
    finally:
        orphan.destroy()
