"""Back-pressure: a full spool answers 503 with Retry-After, drops nothing, and recovers by itself."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sidecar_helpers import FakeUpstream, Sidecar, make_run, proxy, wait_until

TINY_MB = 0.01  # about 10 KB: a few dozen operations


async def fill(sidecar: Sidecar, limit: int = 300) -> tuple[list[dict[str, Any]], Any]:
    """POST runs until the spool refuses one; return the accepted runs and the refusal."""
    accepted: list[dict[str, Any]] = []
    for _ in range(limit):
        run = make_run()
        reply = await sidecar.post("/api/v1/runs", json=run)
        if reply.status != 201:
            return accepted, (run, reply)
        accepted.append(run)
    raise AssertionError(f"the spool never filled after {limit} writes")


async def test_a_full_spool_answers_503_with_retry_after(dead_url, make_sidecar):
    """Once the cap is reached, POST, batch and PATCH get 503 JSON with Retry-After."""
    sidecar = await make_sidecar(dead_url, max_spool_mb=TINY_MB)
    accepted, (_, refusal) = await fill(sidecar)
    assert len(accepted) >= 5
    assert refusal.status == 503
    assert refusal.body["error"] == "service_unavailable"
    assert "spool full" in refusal.body["detail"]
    assert int(refusal.headers["Retry-After"]) >= 1
    batch = await sidecar.post("/api/v1/runs/batch", json=[make_run()])
    assert batch.status == 503
    assert "Retry-After" in batch.headers
    patched = 0
    for _ in range(50):  # updates are smaller than creates: they fit a little longer
        patch = await sidecar.patch(
            f"/api/v1/runs/{accepted[0]['event_id']}", json={"items_failed": patched}
        )
        if patch.status != 200:
            break
        patched += 1
    assert patch.status == 503
    assert "Retry-After" in patch.headers
    health = await sidecar.health()
    assert health["counters"]["accepted"] == len(accepted) + patched
    assert health["spool"]["depth"] == len(accepted) + patched


async def test_health_is_unhealthy_while_writes_are_refused(dead_url, make_sidecar):
    """While writes are refused for lack of space, /health says unhealthy 'spool full' (HTTP 200: liveness)."""
    sidecar = await make_sidecar(dead_url, max_spool_mb=TINY_MB)
    accepted, _ = await fill(sidecar)
    for _ in range(50):
        patch = await sidecar.patch(
            f"/api/v1/runs/{accepted[0]['event_id']}", json={"items_failed": 1}
        )
        if patch.status == 503:
            break
    assert patch.status == 503
    reply = await sidecar.get("/health")
    assert reply.body["status"] == "unhealthy", reply.body["reasons"]
    assert reply.status == 200
    assert any("spool full" in reason for reason in reply.body["reasons"])


async def test_nothing_accepted_is_dropped_and_accepting_resumes(
    dead_url, make_sidecar, start_central
):
    """Every 201 before the cap reaches the server; after the drain, writes are accepted again."""
    sidecar = await make_sidecar(dead_url, max_spool_mb=TINY_MB)
    accepted, (refused_run, _) = await fill(sidecar)
    duplicate = await sidecar.post("/api/v1/runs", json=accepted[0])
    assert duplicate.status == 201
    assert duplicate.body["status"] == "duplicate"
    central = await start_central(port=int(dead_url.rsplit(":", 1)[1]))
    health = await sidecar.wait_drained()
    assert health["status"] == "ok"
    assert health["counters"]["forwarded"] == len(accepted)
    for run in accepted:
        assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 200
    assert (await central.api.get(f"/api/v1/runs/{refused_run['event_id']}")).status == 404
    retried = await sidecar.post("/api/v1/runs", json=refused_run)
    assert retried.status == 201
    assert retried.body["status"] == "created"  # the refused write left no trace


async def test_a_full_spool_recovers_without_a_restart(fake, make_sidecar, central):
    """With the upstream back, the same process drains and accepts again, no operator needed."""
    upstream_up = False

    async def down_until_told(up: FakeUpstream, request: web.Request, raw: bytes) -> Any:
        if not upstream_up:
            return web.json_response({"detail": "down"}, status=503)
        return await proxy(up, request, raw)

    fake.batch_default = down_until_told
    sidecar = await make_sidecar(fake.url, max_spool_mb=TINY_MB, batch_size=2)
    accepted, _ = await fill(sidecar)
    upstream_up = True

    async def accepting() -> bool:
        return (await sidecar.post("/api/v1/runs", json=make_run())).status == 201

    await wait_until(accepting, "spoold to accept writes again")
    health = await sidecar.wait_drained()
    assert health["counters"]["forwarded"] == health["counters"]["accepted"]
    assert health["counters"]["accepted"] >= len(accepted) + 1
    for run in accepted:
        assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 200
