"""PATCH /api/v1/runs/{event_id}: canonical statuses, fields_updated, nulls, 404."""

from __future__ import annotations

import asyncio

import pytest


async def created(api, new_run, **overrides):
    run = new_run(**overrides)
    await api.create(run)
    return run


async def test_patch_answers_200_with_exact_body(api, new_run):
    """A PATCH answers {event_id, updated: true, fields_updated} in the client's key order."""
    run = await created(api, new_run)
    reply = await api.patch(
        f"/api/v1/runs/{run['event_id']}",
        json={"status": "success", "end_time": "2026-01-12T10:35:00Z", "duration_ms": 300000},
    )
    assert reply.status == 200
    assert reply.body == {
        "event_id": run["event_id"],
        "updated": True,
        "fields_updated": ["status", "end_time", "duration_ms"],
    }


async def test_fields_updated_follows_client_key_order(api, new_run):
    """fields_updated lists exactly the fields sent, in the order the client sent them."""
    run = await created(api, new_run)
    body = {
        "items_skipped": 5,
        "output_summary": "done",
        "end_time": "2026-01-12T10:35:00Z",
        "metrics_json": {"a": 1},
        "status": "partial",
        "error_summary": None,
        "items_succeeded": 85,
    }
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json=body)
    assert reply.body["fields_updated"] == list(body)


async def test_patch_applies_values_and_leaves_the_rest(api, new_run):
    """Only the fields given change; all others keep their stored values."""
    run = await created(api, new_run, items_discovered=100, product="p", environment="prod")
    before = await api.run(run["event_id"])
    await api.patch(
        f"/api/v1/runs/{run['event_id']}",
        json={"status": "failure", "items_failed": 7, "error_details": "trace"},
    )
    after = await api.run(run["event_id"])
    assert after["status"] == "failure"
    assert after["items_failed"] == 7
    assert after["error_details"] == "trace"
    unchanged = set(before) - {
        *("status", "items_failed", "error_details", "updated_at", "last_seen_at")
    }
    for field in unchanged:
        assert after[field] == before[field], field


@pytest.mark.parametrize(
    "status", ["running", "success", "failure", "partial", "timeout", "cancelled"]
)
async def test_patch_accepts_every_canonical_status(api, new_run, status):
    """Each canonical status can be set by PATCH."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={"status": status})
    assert reply.status == 200
    assert (await api.run(run["event_id"]))["status"] == status


@pytest.mark.parametrize("alias", ["failed", "completed", "succeeded"])
async def test_patch_refuses_aliases_with_422_naming_status(api, new_run, alias):
    """Aliases are refused on PATCH (422 whose message names status) and nothing changes."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={"status": alias})
    assert reply.status == 422
    [entry] = reply.body["detail"]
    assert entry["loc"] == ["body", "status"]
    assert entry["msg"].startswith("Status must be one of")
    assert "running" in entry["msg"]
    assert (await api.run(run["event_id"]))["status"] == "running"


@pytest.mark.parametrize("status", ["bogus", "", "SUCCESS", 3])
async def test_patch_refuses_unknown_statuses(api, new_run, status):
    """Anything but a canonical status string is a 422 naming status."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={"status": status})
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", "status"]


async def test_patch_unknown_event_id_is_404(api):
    """PATCH of a run that does not exist is a 404 JSON error."""
    reply = await api.patch("/api/v1/runs/no-such-run", json={"status": "success"})
    assert reply.status == 404
    assert reply.body["error"] == "not_found"
    assert "no-such-run" in reply.body["detail"]


async def test_patch_validates_before_looking_up(api):
    """An invalid body for an unknown run is still a 422 (validation comes first)."""
    reply = await api.patch("/api/v1/runs/no-such-run", json={"status": "failed"})
    assert reply.status == 422


async def test_empty_patch_body_is_422(api, new_run):
    """An empty JSON object has nothing to update: 422."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={})
    assert reply.status == 422
    assert reply.body["error"] == "validation_error"


async def test_zero_length_patch_body_is_422(api, new_run):
    """A request with no body at all is a 422 "field required", as the reference answers."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}")
    assert reply.status == 422
    assert reply.body["error"] == "validation_error"


@pytest.mark.parametrize("field", ["stauts", "event_id", "updatedAt", "record_type"])
async def test_unknown_or_read_only_field_is_422(api, new_run, field):
    """Unknown fields (typos) and a different event_id are refused so no update is lost
    silently (echoed server fields are ignored: see test_reference_client_compat.py)."""
    run = await created(api, new_run)
    reply = await api.patch(
        f"/api/v1/runs/{run['event_id']}", json={"status": "success", field: "x"}
    )
    assert reply.status == 422
    assert any(entry["loc"][-1] == field for entry in reply.body["detail"]), reply.body
    assert (await api.run(run["event_id"]))["status"] == "running"


@pytest.mark.parametrize(
    "field",
    [
        "run_id",
        "agent_name",
        "job_type",
        "start_time",
        "status",
        "items_discovered",
        "items_succeeded",
        "items_failed",
        "items_skipped",
        "duration_ms",
    ],
)
async def test_null_for_a_required_column_is_422(api, new_run, field):
    """null cannot clear a column every run must have; the message names the field."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={field: None})
    assert reply.status == 422
    assert field in reply.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("end_time", "2026-01-12T10:35:00Z"),
        ("error_summary", "boom"),
        ("git_repo", "https://github.com/o/r"),
        ("git_commit_hash", "abcdef1"),
        ("metrics_json", {"a": 1}),
        ("context_json", {}),
        ("product", "p"),
    ],
)
async def test_null_clears_an_optional_field(api, new_run, field, value):
    """An explicit null clears an optional field and is listed in fields_updated."""
    run = await created(api, new_run, **{field: value})
    assert (await api.run(run["event_id"]))[field] is not None
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={field: None})
    assert reply.status == 200
    assert reply.body["fields_updated"] == [field]
    assert (await api.run(run["event_id"]))[field] is None


@pytest.mark.parametrize("field", ["items_succeeded", "items_failed", "items_skipped"])
@pytest.mark.parametrize("value", [-1, 2**63, 1.5, True, "3"])
async def test_patch_bad_counters_are_422(api, new_run, field, value):
    """PATCH counters must be integers in 0..2**63-1 (no bools, floats or strings)."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={field: value})
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize("field", ["end_time", "start_time", "git_commit_timestamp"])
@pytest.mark.parametrize("value", ["2026-01-12 10:35:00", "2026-01-12T10:35:00", "soon"])
async def test_patch_timestamps_need_a_timezone(api, new_run, field, value):
    """PATCH timestamps without timezone or unparseable are 422 naming the field."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={field: value})
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", field]


async def test_patch_stores_timestamps_canonically(api, new_run):
    """end_time sent with an offset is stored as the same instant in canonical UTC."""
    run = await created(api, new_run)
    await api.patch(
        f"/api/v1/runs/{run['event_id']}", json={"end_time": "2026-01-12T16:05:00+05:30"}
    )
    assert (await api.run(run["event_id"]))["end_time"] == "2026-01-12T10:35:00.000000+00:00"


async def test_patch_git_commit_fields(api, new_run):
    """git_commit_source/author/timestamp can be set by PATCH (the guide's Option 1)."""
    run = await created(api, new_run)
    body = {
        "git_commit_source": "llm",
        "git_commit_author": "Claude <noreply@anthropic.com>",
        "git_commit_timestamp": "2026-01-12T10:30:00Z",
    }
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json=body)
    assert reply.status == 200
    stored = await api.run(run["event_id"])
    assert stored["git_commit_source"] == "llm"
    assert stored["git_commit_author"] == "Claude <noreply@anthropic.com>"
    assert stored["git_commit_timestamp"] == "2026-01-12T10:30:00.000000+00:00"


async def test_empty_json_object_patch_stays_object(api, new_run):
    """Setting metrics_json to {} stores {} (not null)."""
    run = await created(api, new_run, metrics_json={"a": 1})
    await api.patch(f"/api/v1/runs/{run['event_id']}", json={"metrics_json": {}})
    assert (await api.run(run["event_id"]))["metrics_json"] == {}


async def test_patch_body_must_be_an_object(api, new_run):
    """An array body for PATCH is a 422."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json=[{"status": "success"}])
    assert reply.status == 422


async def test_updated_at_changes_on_every_write(api, new_run):
    """Each PATCH and associate-commit moves updated_at forward; created_at never moves."""
    run = await created(api, new_run)
    first = await api.run(run["event_id"])
    seen = [first["updated_at"]]
    writes = [
        ("PATCH", f"/api/v1/runs/{run['event_id']}", {"items_succeeded": 1}),
        ("PATCH", f"/api/v1/runs/{run['event_id']}", {"items_succeeded": 1}),
        (
            "POST",
            f"/api/v1/runs/{run['event_id']}/associate-commit",
            {"commit_hash": "abcdef1", "commit_source": "ci"},
        ),
    ]
    for method, path, body in writes:
        await asyncio.sleep(0.002)
        assert (await api.request(method, path, json=body)).status == 200
        stored = await api.run(run["event_id"])
        assert stored["updated_at"] > seen[-1]
        assert stored["created_at"] == first["created_at"]
        seen.append(stored["updated_at"])


async def test_patch_renaming_agent_moves_it_in_filters(api, new_run):
    """A PATCH of agent_name is visible to the agent_name filter at once."""
    run = await created(api, new_run, agent_name="before")
    await api.patch(f"/api/v1/runs/{run['event_id']}", json={"agent_name": "after"})
    assert await api.list(agent_name="before") == []
    assert [r["event_id"] for r in await api.list(agent_name="after")] == [run["event_id"]]


@pytest.mark.parametrize("value", ["", "a/b", "x\ty"])
async def test_patch_identifier_rules(api, new_run, value):
    """Identifier columns set by PATCH follow the same rules as on POST."""
    run = await created(api, new_run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={"agent_name": value})
    assert reply.status == 422
