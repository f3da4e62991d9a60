"""The guide's contract at spoold's edge: the server's codes and bodies, nothing invalid spooled."""

from __future__ import annotations

from typing import Any

import pytest
from sidecar_helpers import make_run

EID = "{eid}"  # replaced by the event_id of a run both sides know

# (name, method, path, body as JSON or raw bytes)
INVALID: list[tuple[str, str, str, Any]] = [
    ("post missing start_time", "POST", "/api/v1/runs", {**make_run(), "start_time": None}),
    ("post naive timestamp", "POST", "/api/v1/runs", make_run(start_time="2026-01-12 10:30:00")),
    ("post garbage timestamp", "POST", "/api/v1/runs", make_run(start_time="yesterday")),
    ("post unknown status", "POST", "/api/v1/runs", make_run(status="finished")),
    ("post negative counter", "POST", "/api/v1/runs", make_run(items_failed=-1)),
    ("post slash in event_id", "POST", "/api/v1/runs", make_run(event_id="a/b")),
    ("post array body", "POST", "/api/v1/runs", [make_run()]),
    ("post malformed json", "POST", "/api/v1/runs", b'{"event_id": '),
    ("post empty body", "POST", "/api/v1/runs", b""),
    ("post too deep", "POST", "/api/v1/runs", b"[" * 40 + b"]" * 40),
    ("patch alias failed", "PATCH", f"/api/v1/runs/{EID}", {"status": "failed"}),
    ("patch alias completed", "PATCH", f"/api/v1/runs/{EID}", {"status": "completed"}),
    ("patch unknown field", "PATCH", f"/api/v1/runs/{EID}", {"statuss": "success"}),
    ("patch nothing", "PATCH", f"/api/v1/runs/{EID}", {}),
    ("patch naive end_time", "PATCH", f"/api/v1/runs/{EID}", {"end_time": "2026-01-12T10:35"}),
    ("patch null status", "PATCH", f"/api/v1/runs/{EID}", {"status": None}),
    ("patch string counter", "PATCH", f"/api/v1/runs/{EID}", {"items_succeeded": "5"}),
    ("patch malformed json", "PATCH", f"/api/v1/runs/{EID}", b"{status: success}"),
    (
        "commit bad hash",
        "POST",
        f"/api/v1/runs/{EID}/associate-commit",
        {"commit_hash": "xyz", "commit_source": "llm"},
    ),
    (
        "commit bad source",
        "POST",
        f"/api/v1/runs/{EID}/associate-commit",
        {"commit_hash": "abc1234", "commit_source": "robot"},
    ),
    (
        "commit unknown field",
        "POST",
        f"/api/v1/runs/{EID}/associate-commit",
        {"commit_hash": "abc1234", "commit_source": "llm", "branch": "main"},
    ),
    (
        "commit bad timestamp",
        "POST",
        f"/api/v1/runs/{EID}/associate-commit",
        {"commit_hash": "abc1234", "commit_source": "ci", "commit_timestamp": "noon"},
    ),
    ("batch object body", "POST", "/api/v1/runs/batch", make_run()),
    ("batch malformed json", "POST", "/api/v1/runs/batch", b"[{]"),
    ("batch too many items", "POST", "/api/v1/runs/batch", [make_run() for _ in range(1001)]),
    ("patch unknown run", "PATCH", "/api/v1/runs/no-such-run", {"status": "success"}),
    (
        "commit unknown run",
        "POST",
        "/api/v1/runs/no-such-run/associate-commit",
        {"commit_hash": "abc1234", "commit_source": "llm"},
    ),
    ("patch overlong event_id", "PATCH", "/api/v1/runs/" + "x" * 300, {"status": "success"}),
    ("delete not allowed", "DELETE", f"/api/v1/runs/{EID}", None),
    ("unknown route", "POST", "/api/v1/nothing-here", {}),
]


async def _send(api: Any, method: str, path: str, body: Any) -> Any:
    if isinstance(body, bytes):
        return await api.request(
            method, path, data=body, headers={"Content-Type": "application/json"}
        )
    return await api.request(method, path, json=body)


async def test_post_answers_created_with_the_guide_body(central, make_sidecar):
    """A new event_id is answered 201 {status: created, event_id, run_id}."""
    sidecar = await make_sidecar(central.url)
    run = make_run()
    reply = await sidecar.post("/api/v1/runs", json=run)
    assert reply.status == 201
    assert reply.body == {"status": "created", "event_id": run["event_id"], "run_id": run["run_id"]}


async def test_repeated_post_answers_duplicate_with_the_guide_body(central, make_sidecar):
    """A second POST of an event_id is answered 201 {status: duplicate, ..., message}."""
    sidecar = await make_sidecar(central.url)
    run = make_run()
    await sidecar.create(run)
    reply = await sidecar.post("/api/v1/runs", json={**run, "run_id": "another"})
    assert reply.status == 201
    assert reply.body == {
        "status": "duplicate",
        "event_id": run["event_id"],
        "message": "Event already exists (idempotent)",
    }
    health = await sidecar.health()
    assert health["counters"]["accepted"] == 1
    assert health["counters"]["duplicates_answered"] == 1


async def test_duplicate_detection_survives_a_restart(dead_url, make_sidecar):
    """An event_id accepted before a restart is still answered duplicate after it."""
    sidecar = await make_sidecar(dead_url)
    run = make_run()
    await sidecar.create(run)
    await sidecar.close()
    restarted = await make_sidecar(dead_url)
    reply = await restarted.post("/api/v1/runs", json=run)
    assert reply.status == 201
    assert reply.body["status"] == "duplicate"
    assert (await restarted.health())["counters"]["accepted"] == 1


async def test_invalid_requests_get_the_servers_codes_and_bodies(central, make_sidecar):
    """Every invalid write gets from spoold exactly the status and body the server gives."""
    sidecar = await make_sidecar(central.url)
    known = make_run()
    await sidecar.create(known)
    await sidecar.wait_drained()
    mismatches = []
    for name, method, template, body in INVALID:
        path = template.replace(EID, known["event_id"])
        direct = await _send(central.api, method, path, body)
        spooled = await _send(sidecar, method, path, body)
        assert direct.status >= 400, (name, direct.body)
        if (spooled.status, spooled.body) != (direct.status, direct.body):
            mismatches.append((name, direct.status, direct.body, spooled.status, spooled.body))
    assert not mismatches, mismatches


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/runs", make_run(metrics_json={"pad": "x" * (6 * 1024 * 1024)})),
        ("/api/v1/runs/some-run", {"output_summary": "x" * (6 * 1024 * 1024)}),
    ],
    ids=["post", "patch"],
)
async def test_oversize_body_is_413_like_the_server(central, make_sidecar, path, body):
    """A body over the 5 MiB limit is 413 with the server's body, and nothing is spooled."""
    sidecar = await make_sidecar(central.url)
    method = "PATCH" if path != "/api/v1/runs" else "POST"
    direct = await central.api.request(method, path, json=body)
    spooled = await sidecar.request(method, path, json=body)
    assert direct.status == 413
    assert (spooled.status, spooled.body) == (direct.status, direct.body)
    assert (await sidecar.health())["counters"]["accepted"] == 0


async def test_a_burst_of_invalid_requests_spools_nothing(fake, make_sidecar):
    """After every kind of invalid request, spool depth, accepted and upstream batches are unchanged."""
    sidecar = await make_sidecar(fake.url)
    known = make_run()
    await sidecar.create(known)
    before = (await sidecar.wait_drained())["counters"]
    batches_before = len(fake.batches)
    for _ in range(2):
        for _name, method, template, body in INVALID:
            reply = await _send(sidecar, method, template.replace(EID, known["event_id"]), body)
            assert reply.status >= 400
    batch = await sidecar.post("/api/v1/runs/batch", json=[{"event_id": "x"}, 7, []])
    assert batch.status == 200
    assert batch.body["inserted"] == 0
    health = await sidecar.health()
    assert health["spool"]["depth"] == 0
    assert health["counters"] == before
    assert len(fake.batches) == batches_before


async def test_unknown_fields_on_post_are_ignored_as_the_server_does(central, make_sidecar):
    """POST ignores unknown fields (201, like the server) and they never reach the server."""
    sidecar = await make_sidecar(central.url)
    run = make_run(api_posted=True, whatever={"a": 1})
    direct_run = {**run, "event_id": run["event_id"] + "-direct"}
    assert (await central.api.post("/api/v1/runs", json=direct_run)).status == 201
    reply = await sidecar.post("/api/v1/runs", json=run)
    assert reply.status == 201
    assert reply.body["status"] == "created"
    await sidecar.wait_drained()
    stored = await central.api.run(run["event_id"])
    assert "api_posted" not in stored
    assert "whatever" not in stored


async def test_post_status_alias_is_normalised(central, make_sidecar):
    """POST accepts the guide's aliases and stores the canonical status."""
    sidecar = await make_sidecar(central.url)
    run = make_run(status="failed")
    await sidecar.create(run)
    await sidecar.wait_drained()
    assert (await central.api.run(run["event_id"]))["status"] == "failure"


async def test_batch_answers_per_item_results_like_the_server(central, make_sidecar):
    """A mixed batch is 200 with inserted/duplicates/errors/total equal to the server's answer."""
    sidecar = await make_sidecar(central.url)
    good = make_run()
    items = [
        good,
        make_run(start_time="2026-01-12 10:30:00"),
        "not an object",
        dict(good),
        {"event_id": "only-an-id"},
        make_run(status="completed"),
    ]
    direct_items = [
        {**item, "event_id": item["event_id"] + "-d"} if isinstance(item, dict) else item
        for item in items
    ]
    direct = await central.api.post("/api/v1/runs/batch", json=direct_items)
    spooled = await sidecar.post("/api/v1/runs/batch", json=items)
    assert spooled.status == 200 == direct.status
    assert spooled.body["inserted"] == 2 == direct.body["inserted"]
    assert spooled.body["duplicates"] == 1 == direct.body["duplicates"]
    assert spooled.body["total"] == 6
    assert [e["index"] for e in spooled.body["errors"]] == [1, 2, 4]
    for mine, theirs in zip(spooled.body["errors"], direct.body["errors"], strict=True):
        assert mine["message"] == theirs["message"]
        assert mine["index"] == theirs["index"]
    health = await sidecar.wait_drained()
    assert health["counters"]["accepted"] == 2


async def test_batch_refuses_upsert_mode_at_the_edge(central, make_sidecar):
    """mode=upsert is the sidecar's own channel to the server: agents get 422 for it."""
    sidecar = await make_sidecar(central.url)
    reply = await sidecar.post(
        "/api/v1/runs/batch", json=[{"event_id": "e", "update": {}}], params={"mode": "upsert"}
    )
    assert reply.status == 422
    assert (await sidecar.health())["counters"]["accepted"] == 0


async def test_openapi_document_is_served(central, make_sidecar):
    """spoold serves its OpenAPI document at /openapi.json with the guide's write paths."""
    sidecar = await make_sidecar(central.url)
    reply = await sidecar.get("/openapi.json")
    assert reply.status == 200
    assert "/api/v1/runs/{event_id}" in reply.body["paths"]
    assert "/api/v1/runs/batch" in reply.body["paths"]
