"""Reads: proxied to the server as-is, answered locally for queued runs, clear errors otherwise."""

from __future__ import annotations

import pytest
from sidecar_helpers import answer, hang, make_run, stable

SOURCE = "X-Spoold-Source"


async def test_a_run_only_in_the_local_queue_is_read_from_local_state(dead_url, make_sidecar):
    """Server down: GET of a queued run answers 200 from local state, marked X-Spoold-Source."""
    sidecar = await make_sidecar(dead_url)
    run = make_run(items_discovered=10, git_repo="https://github.com/o/r")
    await sidecar.create(run)
    patch = {"status": "success", "items_succeeded": 10, "git_commit_hash": "abcdef1"}
    assert (await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json=patch)).status == 200
    reply = await sidecar.get(f"/api/v1/runs/{run['event_id']}")
    assert reply.status == 200
    assert reply.headers[SOURCE] == "local-queue"
    assert reply.body["status"] == "success"
    assert reply.body["items_discovered"] == 10
    assert reply.body["items_succeeded"] == 10
    assert reply.body["commit_url"] == "https://github.com/o/r/commit/abcdef1"


async def test_the_local_answer_has_the_shape_of_the_servers(dead_url, make_sidecar, start_central):
    """What spoold answers for a queued run equals what the server answers once it has it."""
    sidecar = await make_sidecar(dead_url)
    run = make_run(
        status="completed",
        metrics_json={"k": [1, {"x": None}]},
        git_repo="https://gitlab.com/g/p",
        git_commit_hash="ABCDEF12",
        end_time="2026-01-12T12:30:00+02:00",
    )
    await sidecar.create(run)
    changes = {"items_failed": 2, "error_details": "trace", "context_json": {"a": 1}}
    assert (await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json=changes)).status == 200
    local = await sidecar.get(f"/api/v1/runs/{run['event_id']}")
    assert local.headers[SOURCE] == "local-queue"
    central = await start_central(port=int(dead_url.rsplit(":", 1)[1]))
    await sidecar.wait_drained()
    served = await central.api.run(run["event_id"])
    assert stable(local.body) == stable(served)
    assert local.body["created_at"] == served["created_at"]
    proxied = await sidecar.get(f"/api/v1/runs/{run['event_id']}")
    assert SOURCE not in proxied.headers
    assert proxied.body == served


async def test_a_delivered_run_is_not_answered_from_the_index_while_the_server_is_down(
    central, make_sidecar
):
    """Once delivered, a run's snapshot is dropped from the index (footprint bounded by the
    backlog): with the server down its GET is 503 like any read, never a partial record."""
    sidecar = await make_sidecar(central.url)
    run = make_run(metrics_json={"big": "m" * 5000})
    await sidecar.create(run)
    await sidecar.wait_drained()
    await central.stop()
    reply = await sidecar.get(f"/api/v1/runs/{run['event_id']}")
    assert reply.status == 503
    assert SOURCE not in reply.headers


async def test_an_update_of_a_delivered_run_queued_while_the_server_is_down_is_not_answered_partial(
    central, make_sidecar, start_central
):
    """A delivered run patched while the server is down: its GET is 503 (the index holds only
    the queued fields, not the run); once the server is back, the update is delivered and the
    server's copy has both the created fields and the update."""
    sidecar = await make_sidecar(central.url)
    run = make_run(items_discovered=4)
    await sidecar.create(run)
    await sidecar.wait_drained()
    port = int(central.url.rsplit(":", 1)[1])
    await central.stop()
    url = f"/api/v1/runs/{run['event_id']}"
    assert (await sidecar.patch(url, json={"status": "success"})).status == 200
    reply = await sidecar.get(url)
    assert reply.status == 503
    commit = await sidecar.get(f"{url}/commit-url")
    assert commit.status == 503
    back = await start_central(port=port)
    await sidecar.wait_drained()
    served = await back.api.run(run["event_id"])
    assert (served["status"], served["items_discovered"]) == ("success", 4)
    proxied = await sidecar.get(url)
    assert proxied.status == 200
    assert proxied.body["status"] == "success"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/runs",
        "/api/v1/runs?agent_name=a",
        "/api/v1/metadata",
        "/api/v1/stats?group_by=job_type",
        "/metrics",
        "/api/v1/runs/unknown-here",
        "/api/v1/runs/unknown-here/commit-url",
    ],
)
async def test_reads_with_the_server_down_are_503_with_a_clear_message(
    dead_url, make_sidecar, path
):
    """Server unreachable and the run not known here: 503 JSON saying so, with Retry-After."""
    sidecar = await make_sidecar(dead_url)
    reply = await sidecar.get(path)
    assert reply.status == 503
    assert reply.body["error"] == "service_unavailable"
    assert "unreachable" in reply.body["detail"]
    assert int(reply.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "path", ["/api/v1/runs", "/api/v1/runs/slow-one", "/api/v1/metadata", "/api/v1/stats"]
)
async def test_a_slow_server_gives_504(fake, make_sidecar, path):
    """The server does not answer within the look-up timeout: 504 JSON, not a hang."""
    fake.read_default = hang(2.0)
    sidecar = await make_sidecar(fake.url, lookup_timeout_s=0.2)
    reply = await sidecar.get(path)
    assert reply.status == 504
    assert reply.body["error"] == "upstream_timeout"


async def test_proxied_reads_pass_the_servers_status_and_body_through(central, make_sidecar):
    """Lists, single runs, URLs, metadata, 404s and 422s come back exactly as the server says."""
    sidecar = await make_sidecar(central.url)
    for n in range(3):
        await central.api.create(
            make_run(run_id=f"p-{n}", git_repo="https://github.com/o/r", git_commit_hash="abcdef1")
        )
    runs = (await central.api.get("/api/v1/runs")).body
    eid = runs[0]["event_id"]
    paths = [
        "/api/v1/runs",
        "/api/v1/runs?agent_name=sidecar-agent&limit=2&offset=1",
        "/api/v1/runs?status=completed",
        "/api/v1/runs?limit=0",
        "/api/v1/runs?created_after=yesterday",
        f"/api/v1/runs/{eid}",
        f"/api/v1/runs/{eid}/commit-url",
        f"/api/v1/runs/{eid}/repo-url",
        "/api/v1/runs/absent",
        "/api/v1/runs/absent/repo-url",
        "/api/v1/metadata",
        "/api/v1/stats",
        "/api/v1/stats?group_by=job_type,day&agent_name=sidecar-agent",
        "/api/v1/stats?group_by=job_type&group_by=status",
        "/api/v1/stats?group_by=nope",
        "/api/v1/stats?start_time_from=2026-01-12T10:30:00",
    ]
    for path in paths:
        direct = await central.api.get(path)
        proxied = await sidecar.get(path)
        assert proxied.status == direct.status, path
        if path != "/api/v1/metadata":  # its cache_hit flag changes between two calls
            assert proxied.body == direct.body, path
    metadata = (await sidecar.get("/api/v1/metadata")).body
    assert metadata["agent_names"] == ["sidecar-agent"]


async def test_proxied_rate_limit_answer_keeps_retry_after(fake, make_sidecar):
    """A 429 from the server reaches the client with its body and Retry-After header."""
    fake.read_default = answer(
        429, {"detail": "slow down", "error": "rate_limited"}, {"Retry-After": "7"}
    )
    sidecar = await make_sidecar(fake.url)
    reply = await sidecar.get("/api/v1/runs")
    assert reply.status == 429
    assert reply.body == {"detail": "slow down", "error": "rate_limited"}
    assert reply.headers["Retry-After"] == "7"


async def test_queued_updates_are_merged_over_the_servers_copy(fake, make_sidecar, central):
    """A server-known run with an update still queued here reads as the server's copy plus it."""
    fake.batch_default = answer(503)
    sidecar = await make_sidecar(fake.url)
    run = make_run(items_discovered=7)
    await central.api.create(run)
    reply = await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"status": "timeout"})
    assert reply.status == 200
    merged = await sidecar.get(f"/api/v1/runs/{run['event_id']}")
    assert merged.status == 200
    assert merged.headers[SOURCE] == "server+local-queue"
    assert merged.body["status"] == "timeout"
    assert merged.body["items_discovered"] == 7
    assert (await central.api.run(run["event_id"]))["status"] == "running"


async def test_list_cursor_walks_through_the_sidecar(central, make_sidecar):
    """X-Next-Cursor comes back through spoold and walks the server's list to its end."""
    sidecar = await make_sidecar(central.url)
    await central.api.post("/api/v1/runs/batch", json=[make_run() for _ in range(7)])
    everything = [run["event_id"] for run in (await central.api.get("/api/v1/runs")).body]
    walked: list[str] = []
    params = {"limit": "3"}
    for _ in range(10):
        page = await sidecar.get("/api/v1/runs", params=params)
        assert page.status == 200
        walked += [run["event_id"] for run in page.body]
        cursor = page.headers.get("X-Next-Cursor")
        if cursor is None:
            break
        params = {"limit": "3", "cursor": cursor}
    assert walked == everything
    forged = await sidecar.get("/api/v1/runs", params={"cursor": "forged.cursor"})
    assert forged.status == 422


@pytest.mark.parametrize(
    "foreign", [["not", "a", "run"], {"event_id": "another-run", "status": "success"}, "text"]
)
async def test_a_foreign_200_is_never_merged_with_queued_updates(
    fake, make_sidecar, central, foreign
):
    """A run with an update queued here, and an upstream whose 200 is not this run (another
    service, a proxy's page, another run): never a 500, never a record stitched from the
    queue and someone else's data; 503, as when the server cannot be asked."""
    fake.batch_default = answer(503)
    sidecar = await make_sidecar(fake.url)
    run = make_run()
    await central.api.create(run)
    assert (
        await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"items_failed": 1})
    ).status == 200
    fake.read_default = answer(200, foreign)
    reply = await sidecar.get(f"/api/v1/runs/{run['event_id']}")
    assert reply.status == 503, reply.body
    assert reply.headers["Retry-After"]


async def test_relayed_headers_are_matched_whatever_their_case(fake, make_sidecar):
    """A proxy in front of the server may lower-case header names (HTTP/2 does): the
    list's X-Next-Cursor and a 429's Retry-After still reach the client."""
    fake.read_default = answer(200, [], {"x-next-cursor": "next.page", "retry-after": "3"})
    sidecar = await make_sidecar(fake.url)
    reply = await sidecar.get("/api/v1/runs")
    assert reply.status == 200
    assert reply.headers.get("X-Next-Cursor") == "next.page"
    assert reply.headers.get("Retry-After") == "3"


async def test_associate_answer_never_takes_a_run_id_from_a_foreign_200(
    fake, make_sidecar, central
):
    """associate-commit of a run known here without its run_id asks the server for it: an
    answer about another run (or not a run) must not lend its run_id to this one."""
    fake.batch_default = answer(503)
    sidecar = await make_sidecar(fake.url)
    run = make_run()
    await central.api.create(run)
    path = f"/api/v1/runs/{run['event_id']}"
    assert (await sidecar.patch(path, json={"items_failed": 1})).status == 200
    fake.read_default = answer(200, {"event_id": "another-run", "run_id": "not-this-run"})
    commit = {"commit_hash": "abcdef1", "commit_source": "ci"}
    reply = await sidecar.post(f"{path}/associate-commit", json=commit)
    assert reply.status == 200, reply.body
    assert reply.body["run_id"] in (None, run["run_id"])
