"""The shared rate limit with real ``telemetry-server`` processes: a replica joining
and another killed (``kill -9``, by PID) in the middle of a client's traffic leave the
client's total within 20 % of its budget."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import daemons
import pg_cluster
import pytest
from rate_traffic import budget, drive

RPM = 600
#: The traffic: until AFTER_KILL_S after the kill, at most MAX_S.
MAX_S = 30.0
AFTER_KILL_S = 1.5
#: The kill: at least this long into the traffic, and after the third replica has joined.
KILL_AT_S = 2.0

_CLEAN_ENV = {
    key: value
    for key, value in os.environ.items()
    if not key.startswith("TELEMETRY_") and key != "DATABASE_URL"
}


@pytest.fixture
def database_url(postgres_cluster: pg_cluster.Cluster) -> Iterator[str]:
    name = postgres_cluster.new_database("rate")
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.drop_database(name)


def _start(tmp_path: Path, url: str) -> daemons.Daemon:
    port = daemons.free_port()
    env = {
        **_CLEAN_ENV,
        "TELEMETRY_DATABASE_URL": url,
        "TELEMETRY_RATE_LIMIT_ENABLED": "true",
        "TELEMETRY_RATE_LIMIT_RPM": str(RPM),
        "TELEMETRY_LOG_LEVEL": "WARNING",
    }
    return daemons.start(
        "server",
        ["--port", str(port), "--db", str(tmp_path / "unused.sqlite")],
        port=port,
        workdir=tmp_path,
        env=env,
    )


@pytest.mark.slow
async def test_a_replica_joining_and_one_killed_mid_traffic_keep_the_budget(
    tmp_path: Path, database_url: str
) -> None:
    started: list[daemons.Daemon] = []
    try:
        started.append(await asyncio.to_thread(_start, tmp_path, database_url))
        started.append(await asyncio.to_thread(_start, tmp_path, database_url))
        # The balancer's view: a replica receives traffic once ready, none once dead.
        ready = [True, True, False]
        urls = [d.url for d in started] + [""]
        joining = asyncio.create_task(asyncio.to_thread(_start, tmp_path, database_url))

        async def chaos() -> None:
            third = await joining
            joined.append(time.monotonic() - begun)
            started.append(third)
            urls[2] = third.url
            ready[2] = True
            await asyncio.sleep(max(0.5, KILL_AT_S - (time.monotonic() - begun)))
            ready[0] = False
            os.kill(started[0].process.pid, signal.SIGKILL)
            await asyncio.sleep(AFTER_KILL_S)
            done.set()

        begun = time.monotonic()
        joined: list[float] = []
        done = asyncio.Event()
        events = asyncio.create_task(chaos())
        tally = await drive(
            urls, lambda n: n % 3, MAX_S, workers=3, alive=lambda i: ready[i], until=done
        )
        await events
        assert ready[2], "the third replica never joined"
        assert started[0].process.wait(10) == -signal.SIGKILL
        expected = budget(RPM, tally.elapsed_s)
        assert tally.sent > 1.2 * expected, tally
        assert abs(tally.allowed - expected) <= 0.2 * expected, (tally, expected)
        assert done.is_set(), f"the third replica took over {MAX_S} s to join"
        assert tally.by_replica[1] > 0, tally
        assert tally.by_replica[2] > 0, tally  # the replica that joined took its share
        for daemon in started[1:]:
            assert "Traceback" not in daemon.log()
    finally:
        for daemon in started:
            daemon.stop()
