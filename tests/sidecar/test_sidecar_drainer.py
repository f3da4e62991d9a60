"""The drainer against a scripted upstream: retries, Retry-After, splits, dead letters, auth."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from typing import Any

import orjson
import pytest
from aiohttp import web
from sidecar_helpers import (
    FakeUpstream,
    answer,
    eventually,
    hang,
    make_run,
    proxy,
    refuse_runs,
    too_large_over,
    wait_until,
)

from spoold.state.storage import INDEX_FILE


async def prefill(make_sidecar: Any, dead_url: str, runs: list[dict[str, Any]]) -> None:
    """Accept a create and an update per run while the upstream is down, then stop spoold."""
    sidecar = await make_sidecar(dead_url)
    for run in runs:
        await sidecar.create(run)
        reply = await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"status": "success"})
        assert reply.status == 200
    await sidecar.close()


async def test_503_then_success_delivers_once(fake, make_sidecar, central):
    """A 503 is retried; the run arrives once and the retry is counted in /health."""
    fake.script(answer(503))
    sidecar = await make_sidecar(fake.url)
    run = make_run()
    await sidecar.create(run)
    health = await sidecar.wait_drained()
    assert [b.answered for b in fake.batches] == [503, 200]
    assert fake.batches[0].body == fake.batches[1].body
    assert health["upstream"]["retries"] == {"http_503": 1}
    assert health["upstream"]["reachable"] is True
    assert health["upstream"]["last_success"] is not None
    assert health["counters"]["forwarded"] == 1
    assert (await central.api.run(run["event_id"]))["run_id"] == run["run_id"]


async def test_429_retry_after_is_honoured(fake, make_sidecar, central):
    """After 429 with Retry-After: 1 the next attempt waits about a second, not the 10 ms backoff."""
    fake.script(answer(429, headers={"Retry-After": "1"}))
    sidecar = await make_sidecar(fake.url)
    run = make_run()
    await sidecar.create(run)
    await sidecar.wait_drained()
    assert [b.answered for b in fake.batches] == [429, 200]
    assert fake.batches[1].at - fake.batches[0].at >= 0.9
    assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 200


async def test_500_answers_are_retried_until_delivered(fake, make_sidecar, central):
    """Repeated 500s (and other 5xx) are retried, never dead-lettered."""
    fake.script(answer(500), answer(500), answer(502), answer(500))
    sidecar = await make_sidecar(fake.url)
    run = make_run()
    await sidecar.create(run)
    health = await sidecar.wait_drained()
    assert [b.answered for b in fake.batches] == [500, 500, 502, 500, 200]
    assert health["spool"]["dead_letters"] == 0
    assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 200


async def test_a_timed_out_batch_is_retried(fake, make_sidecar, central):
    """A batch the server does not answer in time is sent again and arrives."""
    fake.script(hang(1.0))
    sidecar = await make_sidecar(fake.url, upstream_timeout_s=0.2)
    run = make_run()
    await sidecar.create(run)
    health = await sidecar.wait_drained()
    assert len(fake.batches) == 2
    assert health["upstream"]["retries"] == {"connect": 1}
    assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 200


async def test_a_whole_batch_413_is_split_until_everything_arrives(
    dead_url, make_sidecar, fake, central
):
    """413 for any batch of more than one item: spoold halves batches and delivers every run."""
    runs = [make_run() for _ in range(6)]
    await prefill(make_sidecar, dead_url, runs)
    fake.batch_default = too_large_over(1)
    sidecar = await make_sidecar(fake.url)
    health = await sidecar.wait_drained()
    assert len(fake.batches[0].body) == 6
    assert fake.batches[0].answered == 413
    assert sorted(len(batch) for batch in fake.delivered_batches()) == [1] * 6
    assert health["drain"]["splits"] >= 3
    assert health["drain"]["rests_skipped"] == 0  # no agent wrote while it drained
    assert health["spool"]["dead_letters"] == 0
    assert health["counters"]["forwarded"] == 12
    for run in runs:
        assert (await central.api.run(run["event_id"]))["status"] == "success"


async def test_a_batch_refused_because_of_one_item_isolates_it(
    dead_url, make_sidecar, fake, central
):
    """A whole-batch 4xx caused by one run: splitting isolates it, it alone is dead-lettered."""
    runs = [make_run() for _ in range(5)]
    poison = runs[2]["event_id"]
    await prefill(make_sidecar, dead_url, runs)

    async def refuse_poison(up: FakeUpstream, request: web.Request, raw: bytes) -> Any:
        if any(item["event_id"] == poison for item in orjson.loads(raw)):
            return web.json_response({"detail": "bad item", "error": "bad_request"}, status=400)
        return await proxy(up, request, raw)

    fake.batch_default = refuse_poison
    sidecar = await make_sidecar(fake.url)
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 2  # the poison run's create and update
    assert health["counters"]["dead_lettered"] == 2
    assert health["counters"]["forwarded"] == 8
    for run in runs:
        status = (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status
        assert status == (404 if run["event_id"] == poison else 200)


async def test_a_per_item_error_dead_letters_only_that_run(dead_url, make_sidecar, fake, central):
    """errors=[{index}] in a 200 answer: the rest is acked at once; the refused run's
    operations are asked about one by one (each refused here), then dead-lettered."""
    runs = [make_run() for _ in range(4)]
    poison = runs[0]["event_id"]
    await prefill(make_sidecar, dead_url, runs)
    fake.batch_default = refuse_runs({poison})
    sidecar = await make_sidecar(fake.url)
    health = await sidecar.wait_drained()
    assert len(fake.batches) == 2  # the others are not re-sent; the poison run's ops are
    assert [sorted(item) for item in fake.batches[1].body] == [
        ["create", "event_id", "seen_at", "sequence", "source"],
        ["event_id", "seen_at", "sequence", "source", "update"],
    ]
    # the poison run's two operations, sent apart: the later one is the newer snapshot
    first, second = fake.batches[1].body
    assert first["source"] == second["source"]
    assert first["sequence"] < second["sequence"]
    assert health["spool"]["depth"] == 0
    assert health["spool"]["dead_letters"] == 2
    assert health["counters"]["forwarded"] == 6
    assert health["counters"]["dead_lettered"] == 2
    assert health["status"] == "degraded"
    for run in runs[1:]:
        assert (await central.api.run(run["event_id"]))["status"] == "success"
    later = make_run()
    await sidecar.create(later)
    await sidecar.wait_drained()
    assert (await central.api.get(f"/api/v1/runs/{later['event_id']}")).status == 200


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refusals_are_retried_and_reported_never_dead_lettered(
    fake, make_sidecar, central, status
):
    """401/403: the batch stays queued and is retried; /health says auth_failing, degraded."""
    fake.batch_default = answer(status)
    sidecar = await make_sidecar(fake.url, upstream_token="wrong-token")
    run = make_run()
    await sidecar.create(run)

    async def several_refusals() -> bool:
        return len(fake.batches) >= 3

    await wait_until(several_refusals, "the batch to be retried")
    health = await sidecar.health()
    assert health["upstream"]["auth_failing"] is True
    assert health["status"] == "degraded"
    assert any("401/403" in reason for reason in health["reasons"])
    assert health["spool"]["depth"] == 1
    assert health["spool"]["dead_letters"] == 0
    assert health["upstream"]["retries"]["auth"] >= 3
    assert "wrong-token" not in orjson.dumps(health).decode()
    fake.batch_default = proxy
    health = await sidecar.wait_drained()
    assert health["upstream"]["auth_failing"] is False
    assert health["status"] == "ok"
    assert health["counters"]["dead_lettered"] == 0
    assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 200


async def test_the_token_is_sent_upstream_as_a_bearer(fake, make_sidecar):
    """SPOOLD_UPSTREAM_TOKEN goes upstream as Authorization: Bearer on batches."""
    seen: list[str | None] = []

    async def record(up: FakeUpstream, request: web.Request, raw: bytes) -> Any:
        seen.append(request.headers.get("Authorization"))
        return await proxy(up, request, raw)

    fake.batch_default = record
    sidecar = await make_sidecar(fake.url, upstream_token="s3cret")
    await sidecar.create(make_run())
    await sidecar.wait_drained()
    assert seen == ["Bearer s3cret"]
    assert fake.batches[0].query == {"mode": "upsert"}


async def test_accepting_never_waits_on_a_stuck_upstream(fake, make_sidecar):
    """With every batch hanging upstream, writes are still answered promptly from local disk."""
    fake.batch_default = hang(5.0)
    sidecar = await make_sidecar(fake.url, upstream_timeout_s=10.0)
    await sidecar.create(make_run())

    async def stuck() -> bool:
        return len(fake.batches) >= 1

    await wait_until(stuck, "a batch to be in flight")
    for _ in range(20):
        reply = await asyncio.wait_for(sidecar.post("/api/v1/runs", json=make_run()), 3.0)
        assert reply.status == 201
    health = await sidecar.health()
    assert health["spool"]["depth"] == 21
    assert health["upstream"]["in_flight_batches"] == 1


async def test_unreachable_upstream_is_reported_then_recovers(
    dead_url, make_sidecar, start_central
):
    """Connection refused shows reachable false with last_error; once up, last_success is set."""
    sidecar = await make_sidecar(dead_url)
    await sidecar.create(make_run())

    async def unreachable() -> bool:
        return (await sidecar.health())["upstream"]["reachable"] is False

    await wait_until(unreachable, "the failure to be reported")
    health = await sidecar.health()
    assert health["status"] == "degraded"
    assert health["upstream"]["url"] == dead_url
    assert health["upstream"]["last_error"]
    assert health["upstream"]["last_success"] is None
    await start_central(port=int(dead_url.rsplit(":", 1)[1]))
    health = await sidecar.wait_drained()
    assert health["upstream"]["reachable"] is True
    assert health["upstream"]["last_success"] is not None
    assert health["status"] == "ok"


async def test_forwarding_survives_a_failed_bookkeeping_write(central, make_sidecar, spool_dir):
    """After one failed write of the delivery counters, later writes still reach the server."""
    sidecar = await make_sidecar(central.url)
    await sidecar.create(make_run())
    await sidecar.wait_drained()
    index = sqlite3.connect(spool_dir / INDEX_FILE, isolation_level=None)
    try:
        index.execute(
            "CREATE TRIGGER fail_settle BEFORE UPDATE ON counters WHEN NEW.name = 'forwarded'"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
        second = make_run()
        await sidecar.create(second)

        async def delivered() -> bool:
            return (await central.api.get(f"/api/v1/runs/{second['event_id']}")).status == 200

        await wait_until(delivered, "the second run to reach the server")
        await asyncio.sleep(0.1)  # the failing settle happens right after the delivery
    finally:
        index.execute("DROP TRIGGER IF EXISTS fail_settle")
        index.close()
    third = make_run()
    await sidecar.create(third)

    async def recovered() -> bool:
        health = await sidecar.health()
        arrived = (await central.api.get(f"/api/v1/runs/{third['event_id']}")).status == 200
        return arrived or health["status"] == "unhealthy"

    resumed = await eventually(recovered, timeout_s=2)
    shutdown_error = None
    try:
        await sidecar.close()  # a clean shutdown is part of surviving the fault
    except Exception as exc:
        shutdown_error = repr(exc)
    assert resumed, "nothing is forwarded any more and /health does not say so"
    assert shutdown_error is None


async def test_a_404_for_the_batch_endpoint_itself_is_retried_not_dead_lettered(fake, make_sidecar):
    """A 404 'no such route' for the batch URL keeps the operations queued and retried."""
    fake.batch_default = answer(404, {"detail": "Not Found: no such route", "error": "not_found"})
    sidecar = await make_sidecar(fake.url)
    await sidecar.create(make_run())

    async def settled() -> bool:
        health = await sidecar.health()
        return health["spool"]["dead_letters"] > 0 or len(fake.batches) >= 3

    await wait_until(settled, "a retry or a dead letter")
    health = await sidecar.health()
    assert health["spool"]["dead_letters"] == 0
    assert health["spool"]["depth"] == 1


async def test_agents_outrunning_the_rested_drain_get_it_unrested(make_sidecar, fake, central):
    """A server that takes 0.5 s a batch of 10 drains at most 20 operations/s, 10 with its
    rests; four agents write faster than that. The spool grows round after round, so the
    drain stops resting (a busy host's backlog must not grow until the disk is full);
    once the server is quick again everything arrives."""

    async def slow(fake: FakeUpstream, request: web.Request, raw: bytes) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return await proxy(fake, request, raw)

    fake.batch_default = slow
    sidecar = await make_sidecar(fake.url, batch_size=10)
    runs: list[dict[str, Any]] = []
    writing = True

    async def agent() -> None:
        for _ in range(5_000):  # bounded; the test stops it first
            if not writing:
                return
            run = make_run()
            runs.append(run)
            assert (await sidecar.create(run)).status == 201

    agents = [asyncio.create_task(agent()) for _ in range(4)]

    async def went_on_unrested() -> bool:
        return bool((await sidecar.health())["drain"]["rests_skipped"] >= 1)

    try:
        await wait_until(went_on_unrested, "a round without its rest", timeout_s=15.0)
    finally:
        writing = False
        await asyncio.gather(*agents)
    fake.batch_default = proxy
    health = await sidecar.wait_drained(timeout_s=30.0)
    assert health["counters"]["forwarded"] == len(runs)
    async with sidecar.client.get("/metrics", headers={"Accept": "text/plain"}) as response:
        text = (await response.read()).decode()
    skipped = re.search(r"^spoold_drain_rests_skipped(?:_total)? (\S+)$", text, re.MULTILINE)
    assert skipped, text
    assert float(skipped.group(1)) == health["drain"]["rests_skipped"] >= 1
    for run in runs[:: max(1, len(runs) // 20)]:
        assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 200
