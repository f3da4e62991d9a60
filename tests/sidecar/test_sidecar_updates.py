"""PATCH and associate-commit: known runs at once, unknown ones asked upstream, queued when it is down."""

from __future__ import annotations

from sidecar_helpers import answer, hang, make_run, wait_until

COMMIT = {
    "commit_hash": "ABC1234567890",
    "commit_source": "llm",
    "commit_author": "Claude Code <noreply@anthropic.com>",
    "commit_timestamp": "2026-01-12T10:35:00Z",
}


async def test_patch_of_a_known_run_answers_200_with_the_guide_body(dead_url, make_sidecar):
    """A run this sidecar accepted is updated at once (even with the server down): 200, guide body."""
    sidecar = await make_sidecar(dead_url)
    run = make_run()
    await sidecar.create(run)
    reply = await sidecar.patch(
        f"/api/v1/runs/{run['event_id']}",
        json={"status": "success", "end_time": "2026-01-12T10:35:00Z", "duration_ms": 300000},
    )
    assert reply.status == 200
    assert reply.body == {
        "event_id": run["event_id"],
        "updated": True,
        "fields_updated": ["status", "end_time", "duration_ms"],
    }


async def test_associate_commit_of_a_known_run_answers_200_with_the_guide_body(
    dead_url, make_sidecar
):
    """associate-commit on a known run answers 200 {status: success, event_id, run_id, commit_hash}."""
    sidecar = await make_sidecar(dead_url)
    run = make_run()
    await sidecar.create(run)
    reply = await sidecar.post(f"/api/v1/runs/{run['event_id']}/associate-commit", json=COMMIT)
    assert reply.status == 200
    assert reply.body == {
        "status": "success",
        "event_id": run["event_id"],
        "run_id": run["run_id"],
        "commit_hash": COMMIT["commit_hash"].lower(),  # normalised, as the server does
    }


async def test_update_of_a_run_only_the_server_knows_is_accepted_and_delivered(
    central, make_sidecar
):
    """A run created elsewhere: spoold asks the server, answers 200 (run_id from it), delivers."""
    sidecar = await make_sidecar(central.url)
    run = make_run()
    await central.api.create(run)
    patch = await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"items_succeeded": 9})
    assert patch.status == 200
    assert "queued" not in patch.body
    commit = await sidecar.post(f"/api/v1/runs/{run['event_id']}/associate-commit", json=COMMIT)
    assert commit.status == 200
    await sidecar.wait_drained()
    stored = await central.api.run(run["event_id"])
    assert stored["items_succeeded"] == 9
    assert stored["git_commit_hash"] == COMMIT["commit_hash"].lower()
    assert stored["git_commit_source"] == "llm"


async def test_associate_commit_answers_the_run_id_the_server_confirmed(central, make_sidecar):
    """associate-commit on a run only the server knows answers the server's run_id."""
    sidecar = await make_sidecar(central.url)
    run = make_run()
    await central.api.create(run)
    reply = await sidecar.post(f"/api/v1/runs/{run['event_id']}/associate-commit", json=COMMIT)
    assert reply.status == 200
    assert reply.body["run_id"] == run["run_id"]


async def test_associate_commit_after_a_patch_still_answers_the_run_id(central, make_sidecar):
    """associate-commit after a PATCH of a server-only run answers its run_id, not null."""
    sidecar = await make_sidecar(central.url)
    run = make_run()
    await central.api.create(run)
    patch = await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"items_failed": 1})
    assert patch.status == 200
    reply = await sidecar.post(f"/api/v1/runs/{run['event_id']}/associate-commit", json=COMMIT)
    assert reply.status == 200
    assert reply.body["run_id"] == run["run_id"], reply.body


async def test_update_of_a_run_the_server_does_not_know_is_404(central, make_sidecar):
    """Unknown here and the server says 404: the client gets 404 and nothing is spooled."""
    sidecar = await make_sidecar(central.url)
    patch = await sidecar.patch("/api/v1/runs/ghost-run", json={"status": "success"})
    commit = await sidecar.post("/api/v1/runs/ghost-run/associate-commit", json=COMMIT)
    assert patch.status == 404
    assert commit.status == 404
    assert patch.body == {"detail": "Run not found: ghost-run", "error": "not_found"}
    health = await sidecar.health()
    assert health["counters"]["accepted"] == 0
    assert health["spool"]["depth"] == 0


async def test_update_of_an_unknown_run_with_the_server_unreachable_is_202_queued(
    dead_url, make_sidecar
):
    """Server unreachable: PATCH answers 202 with queued: true and the operation is spooled."""
    sidecar = await make_sidecar(dead_url)
    reply = await sidecar.patch("/api/v1/runs/elsewhere-1", json={"status": "success"})
    assert reply.status == 202
    assert reply.body["queued"] is True
    assert reply.body["event_id"] == "elsewhere-1"
    assert reply.body["updated"] is True
    assert reply.body["fields_updated"] == ["status"]
    assert "queued" in reply.body["message"]
    assert (await sidecar.depth()) == 1


async def test_associate_commit_of_an_unknown_run_with_the_server_unreachable_is_202(
    dead_url, make_sidecar
):
    """Server unreachable: associate-commit answers 202 with status queued and the commit hash."""
    sidecar = await make_sidecar(dead_url)
    reply = await sidecar.post("/api/v1/runs/elsewhere-2/associate-commit", json=COMMIT)
    assert reply.status == 202
    assert reply.body["status"] == "queued"
    assert reply.body["event_id"] == "elsewhere-2"
    assert reply.body["commit_hash"] == COMMIT["commit_hash"].lower()
    assert (await sidecar.depth()) == 1


async def test_queued_update_is_delivered_once_the_server_has_the_run(
    dead_url, make_sidecar, central
):
    """An update queued while the server was unreachable is applied once spoold reaches it."""
    sidecar = await make_sidecar(dead_url)
    run = make_run()
    assert (
        await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"status": "timeout"})
    ).status == 202
    commit = await sidecar.post(f"/api/v1/runs/{run['event_id']}/associate-commit", json=COMMIT)
    assert commit.status in (200, 202)
    await sidecar.close()
    await central.api.create(run)  # the run was created through another path meanwhile
    restarted = await make_sidecar(central.url)
    health = await restarted.wait_drained()
    assert health["spool"]["dead_letters"] == 0
    assert health["counters"]["forwarded"] == 2
    stored = await central.api.run(run["event_id"])
    assert stored["status"] == "timeout"
    assert stored["git_commit_hash"] == COMMIT["commit_hash"].lower()


async def test_queued_update_of_a_run_the_server_never_had_is_dead_lettered(
    dead_url, make_sidecar, start_central
):
    """The server comes up without the run: the update becomes a visible not-found dead letter."""
    sidecar = await make_sidecar(dead_url)
    assert (await sidecar.patch("/api/v1/runs/never-there", json={"items_failed": 3})).status == 202
    central = await start_central(port=int(dead_url.rsplit(":", 1)[1]))

    async def dead_lettered() -> bool:
        return (await sidecar.health())["spool"]["dead_letters"] == 1

    await wait_until(dead_lettered, "the update to be dead-lettered")
    health = await sidecar.wait_drained()
    assert health["status"] == "degraded"
    assert any("dead letter" in reason for reason in health["reasons"])
    assert health["counters"]["dead_lettered"] == 1
    assert health["counters"]["forwarded"] == 0
    assert (await central.api.get("/api/v1/runs/never-there")).status == 404


async def test_update_of_an_unknown_run_is_queued_when_the_lookup_times_out(fake, make_sidecar):
    """The server does not answer the look-up in time: 202 queued, not an error."""
    fake.read_default = hang(2.0)
    sidecar = await make_sidecar(fake.url, lookup_timeout_s=0.2)
    reply = await sidecar.patch("/api/v1/runs/slow-lookup", json={"status": "success"})
    assert reply.status == 202
    assert reply.body["queued"] is True


async def test_update_of_an_unknown_run_is_queued_when_the_lookup_fails_with_500(
    fake, make_sidecar
):
    """The server answers the look-up with 500 (cannot say): 202 queued, not 404 or 500."""
    fake.read_default = answer(500)
    sidecar = await make_sidecar(fake.url)
    reply = await sidecar.patch("/api/v1/runs/broken-lookup", json={"status": "success"})
    assert reply.status == 202
    assert reply.body["queued"] is True


async def test_second_update_of_an_unconfirmed_run_still_says_queued(dead_url, make_sidecar):
    """A run known here only through a queued, unconfirmed update is still answered 202 queued."""
    sidecar = await make_sidecar(dead_url)
    first = await sidecar.patch("/api/v1/runs/unconfirmed", json={"items_succeeded": 1})
    assert first.status == 202
    second = await sidecar.patch("/api/v1/runs/unconfirmed", json={"items_succeeded": 2})
    assert second.status == 202, second.body
    assert second.body.get("queued") is True
