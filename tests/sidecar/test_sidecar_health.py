"""/health: liveness independent of the upstream, the numbers an operator needs, the accounting."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from aiohttp import web
from sidecar_helpers import FakeUpstream, answer, make_run, proxy, refuse_runs, wait_until

from spoold import __version__
from spoold.state.storage import INDEX_FILE


def identity_holds(health: dict[str, Any]) -> bool:
    counters = health["counters"]
    return counters["accepted"] == (
        counters["forwarded"] + counters["queued"] + counters["dead_lettered"]
    )


async def test_health_is_200_and_complete_while_the_upstream_is_down(dead_url, make_sidecar):
    """Liveness does not depend on the upstream: 200 with spool, upstream, disk and counters."""
    sidecar = await make_sidecar(dead_url, max_spool_mb=2)
    reply = await sidecar.get("/health")
    assert reply.status == 200
    body = reply.body
    assert body["status"] == "ok"
    assert body["reasons"] == []
    assert body["version"] == __version__
    assert {"depth", "bytes", "capacity_bytes", "oldest_age_s", "dead_letters"} <= set(
        body["spool"]
    )
    assert body["spool"]["capacity_bytes"] == 2 * 1024 * 1024
    assert body["spool"]["depth"] == 0
    assert body["spool"]["oldest_age_s"] is None
    assert {"url", "reachable", "last_success", "last_error"} <= set(body["upstream"])
    assert body["upstream"]["url"] == dead_url
    assert body["disk"]["free_bytes"] > 0
    await sidecar.create(make_run())

    async def failing() -> bool:
        return (await sidecar.health())["upstream"]["reachable"] is False

    await wait_until(failing, "the upstream failure to show")
    reply = await sidecar.get("/health")
    assert reply.status == 200
    assert reply.body["status"] == "degraded"
    assert any("unreachable" in reason for reason in reply.body["reasons"])
    assert reply.body["spool"]["depth"] == 1
    assert reply.body["spool"]["bytes"] > 0
    assert reply.body["spool"]["oldest_age_s"] >= 0


async def test_oldest_age_grows_while_queued_and_clears_when_drained(
    dead_url, make_sidecar, start_central
):
    """oldest_age_s is the age of the oldest queued operation and None once all are delivered."""
    sidecar = await make_sidecar(dead_url)
    await sidecar.create(make_run())
    first = (await sidecar.health())["spool"]["oldest_age_s"]
    await asyncio.sleep(0.2)
    second = (await sidecar.health())["spool"]["oldest_age_s"]
    assert second >= first + 0.15
    await start_central(port=int(dead_url.rsplit(":", 1)[1]))
    health = await sidecar.wait_drained()
    assert health["spool"]["oldest_age_s"] is None
    assert health["spool"]["bytes"] == 0


async def test_health_is_degraded_above_80_percent_of_capacity(dead_url, make_sidecar):
    """A spool over 80% of its cap is reported degraded before it refuses anything."""
    sidecar = await make_sidecar(dead_url, max_spool_mb=0.01)
    for _ in range(200):
        health = await sidecar.health()
        if health["spool"]["bytes"] >= 0.8 * health["spool"]["capacity_bytes"]:
            break
        assert (await sidecar.post("/api/v1/runs", json=make_run())).status == 201
    assert health["status"] == "degraded"
    assert any("80%" in reason for reason in health["reasons"])


async def test_accounting_identity_holds_at_every_step_of_a_drain(dead_url, make_sidecar, fake):
    """accepted = forwarded + queued + dead_lettered before, during and after a stepwise drain."""
    runs = [make_run() for _ in range(12)]
    sidecar = await make_sidecar(dead_url)
    for run in runs:
        await sidecar.create(run)
        assert (
            await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"items_failed": 1})
        ).status == 200
    assert identity_holds(await sidecar.health())
    await sidecar.close()

    gate: asyncio.Queue[None] = asyncio.Queue()
    refuse = refuse_runs({runs[5]["event_id"]})

    async def stepwise(up: FakeUpstream, request: web.Request, raw: bytes) -> web.StreamResponse:
        await asyncio.wait_for(gate.get(), 10)
        return await refuse(up, request, raw)

    fake.batch_default = stepwise
    sidecar = await make_sidecar(fake.url, batch_size=4)
    seen: list[tuple[int, int, int]] = []
    expected_queued = [24, 20, 16, 16, 12, 8, 4]
    for step in range(1, 8):  # 6 rounds, plus run 5's two operations re-sent one by one

        async def in_flight(step: int = step) -> bool:
            return len(fake.batches) == step

        await wait_until(in_flight, f"batch {step} to be in flight")
        # The previous round is recorded while this batch is in flight: read until it is
        # (bounded); the identity must hold at every read on the way.
        for _ in range(200):
            health = await sidecar.health()
            assert identity_holds(health), health["counters"]
            if health["counters"]["queued"] <= expected_queued[step - 1]:
                break
            await asyncio.sleep(0.01)
        counters = health["counters"]
        seen.append((counters["forwarded"], counters["queued"], counters["dead_lettered"]))
        gate.put_nowait(None)
    health = await sidecar.wait_drained()
    assert identity_holds(health)
    assert health["counters"]["accepted"] == 24
    assert health["counters"]["dead_lettered"] == 2
    assert health["counters"]["forwarded"] == 22
    assert [queued for _, queued, _ in seen] == expected_queued


async def test_accounting_identity_holds_while_a_delivery_is_being_recorded(
    fake, make_sidecar, spool_dir
):
    """The server has a batch but its settle waits on the runs index (held by another
    connection): /health still adds up at every read, and adds up again once it lands."""
    fake.batch_default = answer(503)
    sidecar = await make_sidecar(fake.url)
    for _ in range(3):
        await sidecar.create(make_run())
    assert identity_holds(await sidecar.health())
    blocker = sqlite3.connect(spool_dir / INDEX_FILE, isolation_level=None, timeout=5)
    seen: list[dict[str, int]] = []
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the drainer's settle waits (busy_timeout 5 s)
        fake.batch_default = proxy

        async def delivered() -> bool:
            health = await sidecar.health()
            seen.append(health["counters"])
            assert identity_holds(health), health["counters"]
            return len(fake.delivered_batches()) >= 1

        await wait_until(delivered, "the server to answer a batch", timeout_s=3)
        await asyncio.sleep(0.3)  # the settle is now waiting on the lock
        held = await sidecar.health()
        assert identity_holds(held), held["counters"]
        assert held["counters"]["queued"] == 3  # not settled yet: still queued, not forwarded
        assert held["spool"]["depth"] == 3  # and not acked in the spool either
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    health = await sidecar.wait_drained()
    assert identity_holds(health), health["counters"]
    assert health["counters"]["forwarded"] == 3
    assert all(counters["accepted"] == 3 for counters in seen)
