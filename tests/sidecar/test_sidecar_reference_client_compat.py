"""spoold takes what the reference client sends, answers as that client needs, and forwards
only what the server should apply (issue 8, items 1-4, through the sidecar)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from ports import free_port
from reference_wire import WireRun, associate_body, client_fallback, encode
from sidecar_helpers import make_run

ECHOED = ("updated_at", "created_at", "id", "commit_url", "repo_url", "event_id")


def path(event_id: str, suffix: str = "") -> str:
    return "/api/v1/runs/" + quote(event_id, safe="") + suffix


async def send(api: Any, method: str, url: str, body: Any) -> Any:
    return await api.request(
        method, url, data=encode(body), headers={"Content-Type": "application/json"}
    )


async def test_reference_flows_with_the_server_down_then_up(make_sidecar, start_central):
    """start/end, track_run raising, set_metrics with JSON text, associate-commit with a
    non-hex hash: every answer is one the client counts as delivered, with nobody upstream;
    once the server starts, every run has its final state there."""
    port = free_port()
    sidecar = await make_sidecar(f"http://127.0.0.1:{port}")
    ok = WireRun("\U0001f469\u200d\U0001f4bb agent", "nightly\u00a0sync")
    crash = WireRun("compat-agent", "crashy", metrics_json='{"attempt": 1}')
    answers: list[tuple[str, int, Any]] = []

    async def call(kind: str, method: str, url: str, body: Any) -> None:
        reply = await send(sidecar, method, url, body)
        answers.append((kind, reply.status, reply.body))

    for wire in (ok, crash):
        await call("post", "POST", "/api/v1/runs", wire.start_body())
    ok.set_metrics(items_discovered=3, items_succeeded=3, metrics_json=json.dumps({"tokens": 7}))
    await call("patch", "PATCH", path(ok.event_id), ok.end_body("success"))
    await call(
        "patch", "PATCH", path(crash.event_id),
        crash.end_body("failure", error_summary="RuntimeError: disk on fire"),
    )  # fmt: skip
    await call(
        "associate", "POST", path(ok.event_id, "/associate-commit"),
        associate_body("abc123456789llm", "llm", "Claude <noreply@anthropic.com>"),
    )  # fmt: skip
    fallbacks = [client_fallback(kind, status, body) for kind, status, body in answers]
    assert fallbacks == [None] * len(answers), answers

    central = await start_central(port)
    await sidecar.wait_drained(timeout_s=20)
    first = await central.api.run(ok.event_id)
    assert (first["status"], first["items_succeeded"], first["metrics_json"]) == (
        "success",
        3,
        {"tokens": 7},
    )
    assert (first["agent_name"], first["job_type"]) == (
        ok.record["agent_name"],
        "nightly\u00a0sync",
    )
    assert first["git_commit_hash"] == "abc123456789llm"
    second = await central.api.run(crash.event_id)
    assert (second["status"], second["error_summary"]) == ("failure", "RuntimeError: disk on fire")
    assert second["metrics_json"] == {"attempt": 1}


async def test_echoed_fields_never_travel_in_the_spool(fake, make_sidecar):
    """What spoold forwards for a PATCH is what the server would apply: no echoed fields."""
    sidecar = await make_sidecar(fake.url)
    wire = WireRun("compat-agent", "echo")
    assert (await send(sidecar, "POST", "/api/v1/runs", wire.start_body())).status == 201
    body = {**wire.end_body("success"), "created_at": "2030-01-01T00:00:00Z", "id": 4,
            "commit_url": None, "repo_url": None, "event_id": wire.event_id}  # fmt: skip
    reply = await send(sidecar, "PATCH", path(wire.event_id), body)
    assert reply.status == 200
    assert not set(reply.body["fields_updated"]) & set(ECHOED)
    await sidecar.wait_drained()
    forwarded = [item for batch in fake.batches for item in batch.body]
    assert forwarded, "nothing was forwarded"
    for item in forwarded:
        assert not set(item.get("update", {})) & set(ECHOED), item
        assert "updated_at" not in item.get("create", {}), item
    stored = await fake_central_run(fake, wire.event_id)
    assert stored["status"] == "success"
    assert stored["created_at"] != "2030-01-01T00:00:00.000000+00:00"


async def fake_central_run(fake: Any, event_id: str) -> dict[str, Any]:
    status, raw, _ = await fake.forward("GET", path(event_id), b"")
    assert status == 200, raw
    return dict(json.loads(raw))


async def test_a_different_event_id_or_only_echoes_are_422_and_nothing_is_spooled(
    dead_url, make_sidecar
):
    sidecar = await make_sidecar(dead_url)
    run = make_run()
    await sidecar.create(run)
    depth = await sidecar.depth()
    renamed = await sidecar.patch(
        path(run["event_id"]), json={"status": "success", "event_id": "x"}
    )
    assert renamed.status == 422
    assert renamed.body["detail"][0]["loc"] == ["body", "event_id"]
    echoes = await sidecar.patch(path(run["event_id"]), json={"updated_at": "2030-01-01T00:00:00Z"})
    assert echoes.status == 422
    same_run_id = await sidecar.patch(path(run["event_id"]), json={"run_id": run["run_id"]})
    assert same_run_id.status == 422
    typo = await sidecar.patch(path(run["event_id"]), json={"status": "success", "stauts": "x"})
    assert typo.status == 422
    assert await sidecar.depth() == depth


async def test_run_id_echo_is_dropped_for_runs_known_here_and_only_upstream(central, make_sidecar):
    sidecar = await make_sidecar(central.url)
    local, remote = make_run(), make_run()
    await sidecar.create(local)
    await central.api.create(remote)
    for run in (local, remote):
        reply = await sidecar.patch(
            path(run["event_id"]), json={"run_id": run["run_id"], "items_failed": 1}
        )
        assert reply.status == 200, reply.body
        assert reply.body["fields_updated"] == ["items_failed"]
    renamed = await sidecar.patch(path(local["event_id"]), json={"run_id": "renamed"})
    assert renamed.body["fields_updated"] == ["run_id"]
    await sidecar.wait_drained()
    assert (await central.api.run(local["event_id"]))["run_id"] == "renamed"
    assert (await central.api.run(remote["event_id"]))["items_failed"] == 1


@pytest.mark.parametrize("text", ["not json", "[1]", "null", "7"])
async def test_json_text_that_is_not_an_object_is_422_at_the_edge(dead_url, make_sidecar, text):
    sidecar = await make_sidecar(dead_url)
    reply = await sidecar.post("/api/v1/runs", json=make_run(metrics_json=text))
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", "metrics_json"]
    deep = '{"a":' * 10_000 + "1" + "}" * 10_000
    reply = await sidecar.post("/api/v1/runs", json=make_run(context_json=deep))
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", "context_json"]
    assert await sidecar.depth() == 0


NAMES = ["\U0001f469\u200d\U0001f4bb", "caf\u00e9\u00a0bar", "e\u0301", "\u05e9\u05dc\u05d5\u05dd"]


@pytest.mark.parametrize("name", NAMES)
async def test_unicode_names_round_trip_through_spoold(central, make_sidecar, name):
    sidecar = await make_sidecar(central.url)
    run = make_run(agent_name=name, job_type=name, run_id=name, event_id=f"{name}-{free_port()}")
    reply = await send(sidecar, "POST", "/api/v1/runs", run)
    assert reply.status == 201, reply.body
    local = await sidecar.get(path(run["event_id"]))
    assert local.status == 200
    assert local.body["agent_name"] == name
    patch = await send(sidecar, "PATCH", path(run["event_id"]), {"status": "success"})
    assert patch.status == 200, patch.body
    await sidecar.wait_drained()
    listed = await sidecar.get("/api/v1/runs", params={"agent_name": name})
    assert [(r["event_id"], r["run_id"], r["status"]) for r in listed.body] == [
        (run["event_id"], name, "success")
    ]
    assert (await sidecar.get(path(run["event_id"]))).body["job_type"] == name


async def test_reference_commit_hashes_are_accepted_and_linked(central, make_sidecar):
    sidecar = await make_sidecar(central.url)
    run = make_run(git_repo="https://bitbucket.org/owner/repo", git_commit_hash="789xyz123")
    await sidecar.create(run)
    assert (await sidecar.get(path(run["event_id"], "/commit-url"))).body[
        "commit_url"
    ] == "https://bitbucket.org/owner/repo/commits/789xyz123"
    commit = await sidecar.post(
        path(run["event_id"], "/associate-commit"),
        json={"commit_hash": "abc123456789manual", "commit_source": "manual"},
    )
    assert commit.status == 200, commit.body
    assert commit.body["commit_hash"] == "abc123456789manual"
    await sidecar.wait_drained()
    stored = await central.api.run(run["event_id"])
    assert stored["commit_url"] == "https://bitbucket.org/owner/repo/commits/abc123456789manual"
