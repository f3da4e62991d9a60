"""kill -9 of a real spoold at the drain's two record boundaries loses nothing and
duplicates nothing on the server.

- After the server answered a round and before its settle: the restarted spoold sends
  the round again (the only copy of "delivered" was the lost answer); the server applies
  the snapshots idempotently, so each run is stored once, as acknowledged, and the
  counters count each operation once.
- After the settle (fsync'd) and before the spool ack: the restarted spoold acks the
  round at start-up without sending any of it again.

The kill is aimed from inside (``spoold_killed_at``); the server sits behind a proxy
here that holds every batch until the spool holds the whole backlog (so the first round
carries all of it) and counts the batches that reach the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from daemons import free_port
from procs import (
    Reaper,
    RunLedger,
    agent,
    health,
    log_events,
    server_rows,
    start_server,
    start_spoold,
    tally,
    wait_drained,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FAULTS_DIR = Path(__file__).resolve().parent


class CountingProxy:
    """127.0.0.1 proxy to the server: 503 for batches while closed, counts those forwarded."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.open = False
        self.batches = 0
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        batch = request.path.startswith("/api/v1/runs/batch")
        if batch and not self.open:
            return web.Response(status=503, headers={"Retry-After": "0"})
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as answer,
        ):
            payload = await answer.read()
            if batch:
                self.batches += 1
            return web.Response(
                status=answer.status,
                body=payload,
                headers={"Content-Type": answer.headers.get("Content-Type", "application/json")},
            )


@contextlib.asynccontextmanager
async def counting_proxy(upstream: str) -> AsyncIterator[CountingProxy]:
    proxy = CountingProxy(upstream)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", proxy.port).start()
        yield proxy
    finally:
        await runner.cleanup()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("boundary", ["settle", "ack"])
async def test_kill_9_between_the_drains_stages_loses_and_duplicates_nothing(
    tmp_path: Path, reaper: Reaper, boundary: str
) -> None:
    db = tmp_path / "server.sqlite"
    server = start_server(reaper, tmp_path, port=free_port(), db=db)
    async with counting_proxy(server.url) as proxy:
        await _kill_at(tmp_path, reaper, proxy, db, boundary)


async def _kill_at(
    tmp_path: Path, reaper: Reaper, proxy: CountingProxy, db: Path, boundary: str
) -> None:
    daemon_args = {
        "port": free_port(),
        "upstream": f"http://127.0.0.1:{proxy.port}",
        "spool_dir": tmp_path / "spool",
    }
    # 1. A backlog, spooled while the server is out of reach (20 lifecycles, 120 operations).
    filler = await asyncio.to_thread(start_spoold, reaper, tmp_path, **daemon_args)
    ledger: list[RunLedger] = []
    stop = asyncio.Event()
    await asyncio.gather(*(agent(filler.url, ledger, stop=stop, max_runs=5) for _ in range(4)))
    acked = sum(run.acked_ops() for run in ledger)
    assert acked == 20 * 6, "every lifecycle is acknowledged (spooled)"
    assert await asyncio.to_thread(filler.stop) == 0
    # 2. A spoold that kills itself at the boundary: its first round is the whole backlog.
    env = {
        "SPOOLD_TEST_KILL_AT": boundary,
        "PYTHONPATH": os.pathsep.join([str(FAULTS_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    doomed = await asyncio.to_thread(
        start_spoold, reaper, tmp_path, env=env, module="spoold_killed_at", **daemon_args
    )
    assert health(doomed)["spool"]["depth"] == acked
    proxy.open = True
    returncode = await asyncio.to_thread(doomed.process.wait, 30)
    assert returncode == -signal.SIGKILL
    sent_before = proxy.batches
    assert sent_before >= 1, "the round reached the server before the kill"
    # 3. A plain spoold on the same files.
    spoold = await asyncio.to_thread(start_spoold, reaper, tmp_path, **daemon_args)
    body = await asyncio.to_thread(wait_drained, spoold, timeout_s=60)
    counters = body["counters"]
    resent = proxy.batches - sent_before
    print(
        f"\n[drain kill -9 at {boundary}] {counters}; batches before {sent_before}, after {resent}"
    )

    result = tally(ledger, server_rows(db))  # server_rows: no event_id stored twice
    assert result.lost == 0, result.problems
    assert result.problems == []
    assert counters["accepted"] == acked
    assert counters["forwarded"] == acked  # each operation counted once, never twice
    assert counters["queued"] == counters["dead_lettered"] == 0
    events = [event.get("event") for event in log_events(spoold)]
    if boundary == "ack":
        assert resent == 0, "a round settled before the kill was sent again"
        assert "spool_delivered_items_acked" in events
    else:
        assert resent >= 1, "a round never recorded must be sent again"
    assert await asyncio.to_thread(spoold.stop) == 0
