"""Forwarding: what reaches the server through spoold is what the client sent, coalesced, once."""

from __future__ import annotations

from typing import Any

from sidecar_helpers import Api, answer, hang, make_run, proxy_then, stable

RICH = {
    "agent_name": "parity-agent",
    "job_type": "parity-job",
    "status": "running",
    "items_discovered": 100,
    "environment": "production",
    "git_repo": "https://github.com/myorg/myrepo",
    "git_branch": "main",
    "metrics_json": {"input_tokens": 1500, "nested": {"a": [1, 2]}},
    "context_json": {"model": "m"},
    "product": "seo-intelligence",
}
COMMIT = {
    "commit_hash": "abc1234567890",
    "commit_source": "llm",
    "commit_author": "Claude Code <noreply@anthropic.com>",
    "commit_timestamp": "2026-01-12T10:35:00+01:00",
}
PROGRESS = {"items_succeeded": 50, "items_failed": 2, "error_summary": "2 bad"}
FINISH = {
    "status": "partial",
    "end_time": "2026-01-12T10:40:00Z",
    "duration_ms": 600000,
    "items_succeeded": 98,
    "error_summary": None,
    "output_summary": "done",
}


async def lifecycle(api: Api, run: dict[str, Any]) -> None:
    """POST -> PATCH progress -> associate-commit -> PATCH complete, each answered 2xx."""
    eid = run["event_id"]
    assert (await api.post("/api/v1/runs", json=run)).status == 201
    assert (await api.patch(f"/api/v1/runs/{eid}", json=PROGRESS)).status == 200
    assert (await api.post(f"/api/v1/runs/{eid}/associate-commit", json=COMMIT)).status == 200
    assert (await api.patch(f"/api/v1/runs/{eid}", json=FINISH)).status == 200


def without_id(run: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in stable(run).items() if key != "event_id"}


async def test_lifecycle_through_spoold_gives_the_same_row_as_direct(central, make_sidecar):
    """POST, PATCH, associate-commit, PATCH through spoold store the row the direct calls store."""
    sidecar = await make_sidecar(central.url)
    through = make_run(**RICH, run_id="parity-run")
    direct = make_run(**RICH, run_id="parity-run")
    await lifecycle(sidecar, through)
    await lifecycle(central.api, direct)
    await sidecar.wait_drained()
    assert without_id(await central.api.run(through["event_id"])) == without_id(
        await central.api.run(direct["event_id"])
    )


async def test_lifecycle_queued_during_an_outage_gives_the_same_row(
    dead_url, make_sidecar, start_central
):
    """The same lifecycle sent while the server is down arrives, coalesced, as the same row."""
    sidecar = await make_sidecar(dead_url)
    through = make_run(**RICH, run_id="parity-run")
    await lifecycle(sidecar, through)
    central = await start_central(port=int(dead_url.rsplit(":", 1)[1]))
    direct = make_run(**RICH, run_id="parity-run")
    await lifecycle(central.api, direct)
    health = await sidecar.wait_drained()
    assert health["counters"]["forwarded"] == 4
    assert without_id(await central.api.run(through["event_id"])) == without_id(
        await central.api.run(direct["event_id"])
    )


async def test_operations_of_many_runs_coalesce_into_fewer_items(
    dead_url, make_sidecar, fake, central
):
    """60 operations on 20 runs reach the server as one batch of 20 snapshots, final state intact."""
    sidecar = await make_sidecar(dead_url)
    runs = [make_run(run_id=f"co-{n}") for n in range(20)]
    for n, run in enumerate(runs):
        await sidecar.create(run)
        path = f"/api/v1/runs/{run['event_id']}"
        assert (await sidecar.patch(path, json={"items_succeeded": n})).status == 200
        assert (await sidecar.patch(path, json={"status": "success"})).status == 200
    await sidecar.close()
    restarted = await make_sidecar(fake.url)
    health = await restarted.wait_drained()
    assert health["counters"]["forwarded"] == 60
    delivered = fake.delivered_batches()
    assert [len(batch) for batch in delivered] == [20]
    keys = {"event_id", "create", "update", "seen_at", "source", "sequence"}
    assert all(set(item) == keys for item in delivered[0])
    for n, run in enumerate(runs):
        stored = await central.api.run(run["event_id"])
        assert (stored["status"], stored["items_succeeded"]) == ("success", n)
    metrics = (await central.api.get("/metrics")).body
    assert metrics["performance"]["write_operations"] < 60


async def test_updates_reach_the_server_in_fifo_order(dead_url, make_sidecar, fake, central):
    """With one operation per batch, updates arrive in the order accepted; the last one wins."""
    sidecar = await make_sidecar(dead_url)
    run = make_run()
    await sidecar.create(run)
    for value in range(1, 6):
        reply = await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"items_failed": value})
        assert reply.status == 200
    await sidecar.close()
    restarted = await make_sidecar(fake.url, batch_size=1)
    await restarted.wait_drained()
    sent = [item.get("update", {}).get("items_failed") for item in fake.items_sent(run["event_id"])]
    assert sent == [None, 1, 2, 3, 4, 5]
    assert (await central.api.run(run["event_id"]))["items_failed"] == 5


async def test_running_after_a_delivered_terminal_status_does_not_regress_it(central, make_sidecar):
    """Through spoold, a terminal status already on the server is never replaced by running."""
    sidecar = await make_sidecar(central.url)
    run = make_run()
    eid = run["event_id"]
    await sidecar.create(run)
    assert (await sidecar.patch(f"/api/v1/runs/{eid}", json={"status": "success"})).status == 200
    await sidecar.wait_drained()
    reply = await sidecar.patch(
        f"/api/v1/runs/{eid}", json={"status": "running", "items_failed": 4}
    )
    assert reply.status == 200
    await sidecar.wait_drained()
    stored = await central.api.run(eid)
    assert stored["status"] == "success"
    assert stored["items_failed"] == 4  # the rest of the update still applies


async def test_running_after_a_queued_terminal_status_does_not_regress_it(
    dead_url, make_sidecar, central
):
    """Success then running, coalesced during an outage, ends as success like separate delivery."""
    sidecar = await make_sidecar(dead_url)
    run = make_run()
    eid = run["event_id"]
    await sidecar.create(run)
    assert (await sidecar.patch(f"/api/v1/runs/{eid}", json={"status": "success"})).status == 200
    assert (await sidecar.patch(f"/api/v1/runs/{eid}", json={"status": "running"})).status == 200
    await sidecar.close()
    restarted = await make_sidecar(central.url)
    await restarted.wait_drained()
    assert (await central.api.run(eid))["status"] == "success"


async def test_a_stale_snapshot_replayed_after_a_lost_answer_keeps_the_terminal_status(
    dead_url, make_sidecar, fake, central
):
    """A batch whose answer was lost is re-sent; a terminal status set meanwhile survives it."""
    sidecar = await make_sidecar(dead_url)
    run = make_run()
    eid = run["event_id"]
    await sidecar.create(run)
    reply = await sidecar.patch(
        f"/api/v1/runs/{eid}", json={"status": "running", "items_failed": 1}
    )
    assert reply.status == 200
    await sidecar.close()

    async def finished_elsewhere() -> None:
        done = await central.api.patch(f"/api/v1/runs/{eid}", json={"status": "cancelled"})
        assert done.status == 200

    fake.script(proxy_then(503, finished_elsewhere))
    restarted = await make_sidecar(fake.url)
    await restarted.wait_drained()
    assert len(fake.batches) == 2
    assert fake.batches[0].body == fake.batches[1].body
    stored = await central.api.run(eid)
    assert (stored["status"], stored["items_failed"]) == ("cancelled", 1)
    listed = await central.api.get("/api/v1/runs", params={"agent_name": "sidecar-agent"})
    assert [r["event_id"] for r in listed.body] == [eid]


async def test_flapping_upstream_loses_nothing_and_duplicates_nothing(
    dead_url, make_sidecar, fake, central
):
    """5xx, 429, timeouts and lost answers: every run arrives once, in its final state."""
    sidecar = await make_sidecar(dead_url)
    runs = [make_run(run_id=f"flap-{n}") for n in range(12)]
    for n, run in enumerate(runs):
        await sidecar.create(run)
        status = "success" if n % 2 else "failure"
        reply = await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"status": status})
        assert reply.status == 200
    await sidecar.close()
    fake.script(
        answer(503),
        answer(429, headers={"Retry-After": "0"}),
        hang(1.0),
        answer(500),
        proxy_then(502),
        answer(504),
        proxy_then(500),
    )
    restarted = await make_sidecar(fake.url, batch_size=4, upstream_timeout_s=0.3)
    health = await restarted.wait_drained(timeout_s=20)
    assert health["counters"]["forwarded"] == 24
    assert health["spool"]["dead_letters"] == 0
    listed = await central.api.get(
        "/api/v1/runs", params={"agent_name": "sidecar-agent", "limit": "100"}
    )
    assert sorted(r["run_id"] for r in listed.body) == sorted(r["run_id"] for r in runs)
    for n, run in enumerate(runs):
        stored = await central.api.run(run["event_id"])
        assert stored["status"] == ("success" if n % 2 else "failure")


async def test_everything_arrives_after_two_restarts_during_an_outage(
    dead_url, make_sidecar, start_central
):
    """Server down at start, spoold restarted twice meanwhile: every write still arrives."""
    accepted = []
    for _round in range(3):
        sidecar = await make_sidecar(dead_url)
        for _ in range(3):
            run = make_run()
            await sidecar.create(run)
            accepted.append(run["event_id"])
        await sidecar.close()
    sidecar = await make_sidecar(dead_url)
    assert (await sidecar.depth()) == 9
    central = await start_central(port=int(dead_url.rsplit(":", 1)[1]))
    health = await sidecar.wait_drained()
    assert health["counters"] == {**health["counters"], "accepted": 9, "forwarded": 9}
    for event_id in accepted:
        assert (await central.api.get(f"/api/v1/runs/{event_id}")).status == 200
