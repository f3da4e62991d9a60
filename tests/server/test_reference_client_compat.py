"""The server takes what the reference client (and clients like it) send (issue 8, items 1-4).

Each test sends the exact wire bodies (``reference_wire``), encoded as ``requests`` does.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from reference_wire import WireRun, associate_body, client_fallback, encode

ORDINARY_NAMES = [
    "\U0001f469\u200d\U0001f4bb",
    "agent\u00a0one",
    "e\u0301te\u0301",
    "\u05e1\u05d5\u05db\u05df-\u0627\u0644\u0639\u0645\u064a\u0644",
    "\u202bbidi\u202c \u2066isolate\u2069",
    "\U0001f3f3\ufe0f\u200d\U0001f308 flag",
]


def path(event_id: str, suffix: str = "") -> str:
    return "/api/v1/runs/" + quote(event_id, safe="") + suffix


async def send(api: Any, method: str, url: str, body: Any) -> Any:
    return await api.request(
        method, url, data=encode(body), headers={"Content-Type": "application/json"}
    )


async def started(api: Any, wire: WireRun) -> None:
    reply = await send(api, "POST", "/api/v1/runs", wire.start_body())
    assert client_fallback("post", reply.status, reply.body) is None, reply.body
    assert reply.body["status"] == "created"


# ---- 1. PATCH with echoed server fields ------------------------------------------------------


async def test_reference_end_run_is_applied_not_refused(api):
    """end_run's PATCH carries updated_at: 200, the run leaves `running` with its counters."""
    wire = WireRun("compat-agent", "nightly")
    await started(api, wire)
    wire.set_metrics(items_discovered=10, items_succeeded=9, items_failed=1, output_summary="ok")
    body = wire.end_body("success")
    assert "updated_at" in body
    reply = await send(api, "PATCH", path(wire.event_id), body)
    assert client_fallback("patch", reply.status, reply.body) is None, reply.body
    assert reply.body["fields_updated"] == [key for key in body if key != "updated_at"]
    stored = await api.run(wire.event_id)
    assert stored["status"] == "success"
    assert (stored["items_discovered"], stored["items_succeeded"], stored["items_failed"]) == (
        10,
        9,
        1,
    )
    assert stored["output_summary"] == "ok"
    assert stored["duration_ms"] == body["duration_ms"]
    assert stored["updated_at"] != body["updated_at"]  # the server's clock, not the client's


async def test_track_run_exception_path_records_failure_and_error_text(api):
    """track_run's exit after a raise: status failure with "<Type>: <message>"."""
    wire = WireRun("compat-agent", "crashy")
    await started(api, wire)
    reply = await send(
        api, "PATCH", path(wire.event_id), wire.end_body("failure", error_summary="KeyError: 'x'")
    )
    assert reply.status == 200, reply.body
    stored = await api.run(wire.event_id)
    assert (stored["status"], stored["error_summary"]) == ("failure", "KeyError: 'x'")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("updated_at", "2030-01-01T00:00:00+00:00"),
        ("created_at", "2030-01-01T00:00:00Z"),
        ("created_at", "not even a timestamp"),
        ("id", 123),
        ("commit_url", "https://evil.example/commit/1"),
        ("repo_url", None),
    ],
)
async def test_echoed_server_fields_are_ignored(api, new_run, field, value):
    run = new_run(git_repo="https://github.com/o/r", git_commit_hash="abcdef1")
    await api.create(run)
    before = await api.run(run["event_id"])
    reply = await api.patch(path(run["event_id"]), json={"status": "success", field: value})
    assert reply.status == 200, reply.body
    assert reply.body["fields_updated"] == ["status"]
    after = await api.run(run["event_id"])
    assert after["status"] == "success"
    if field in ("created_at", "commit_url", "repo_url"):
        assert after[field] == before[field]


async def test_a_run_read_back_and_patched_whole_is_accepted(api, new_run):
    """GET a run, change its status, PATCH everything back: only real fields are listed."""
    run = new_run(git_repo="https://github.com/o/r", git_commit_hash="ABCDEF1")
    await api.create(run)
    record = await api.run(run["event_id"])
    record["status"] = "partial"
    record["items_failed"] = 2
    reply = await api.patch(path(run["event_id"]), json=record)
    assert reply.status == 200, reply.body
    listed = set(reply.body["fields_updated"])
    assert {"status", "items_failed"} <= listed
    assert not listed & {"event_id", "run_id", "created_at", "updated_at", "commit_url", "repo_url"}
    after = await api.run(run["event_id"])
    assert (after["status"], after["items_failed"]) == ("partial", 2)
    assert after["created_at"] == record["created_at"]


async def test_a_different_event_id_in_the_body_is_refused_not_a_rename(api, new_run):
    first, second = new_run(), new_run()
    await api.create(first)
    await api.create(second)
    reply = await api.patch(
        path(first["event_id"]), json={"status": "success", "event_id": second["event_id"]}
    )
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", "event_id"]
    assert (await api.run(first["event_id"]))["status"] == "running"
    assert (await api.run(second["event_id"]))["status"] == "running"


async def test_a_patch_of_only_echoed_fields_is_422_and_changes_nothing(api, new_run):
    run = new_run()
    await api.create(run)
    before = await api.run(run["event_id"])
    reply = await api.patch(
        path(run["event_id"]),
        json={"updated_at": "2030-01-01T00:00:00Z", "event_id": run["event_id"], "id": 1},
    )
    assert reply.status == 422
    assert "no fields to update" in reply.body["detail"][0]["msg"]
    assert "updated_at" in reply.body["detail"][0]["msg"]
    assert await api.run(run["event_id"]) == before


async def test_run_id_equal_to_the_stored_one_is_an_echo(api, new_run):
    run = new_run()
    await api.create(run)
    reply = await api.patch(
        path(run["event_id"]), json={"run_id": run["run_id"], "status": "success"}
    )
    assert reply.status == 200
    assert reply.body["fields_updated"] == ["status"]
    only = await api.patch(path(run["event_id"]), json={"run_id": run["run_id"]})
    assert only.status == 422
    renamed = await api.patch(path(run["event_id"]), json={"run_id": "another-run"})
    assert renamed.status == 200
    assert renamed.body["fields_updated"] == ["run_id"]
    assert (await api.run(run["event_id"]))["run_id"] == "another-run"
    missing = await api.patch(path("no-such-run"), json={"run_id": "x", "status": "success"})
    assert missing.status == 404


@pytest.mark.parametrize("field", ["stauts", "updatedAt", "api_posted", "record_type"])
async def test_typos_are_still_refused(api, new_run, field):
    run = new_run()
    await api.create(run)
    reply = await api.patch(path(run["event_id"]), json={"status": "success", field: 1})
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", field]
    assert (await api.run(run["event_id"]))["status"] == "running"


# ---- 2. commit hashes of any VCS ---------------------------------------------------------------

#: (git_repo, git_commit_hash, expected commit_url), from the reference's own HTTP tests.
REFERENCE_HASHES = [
    ("https://bitbucket.org/owner/repo", "789xyz123", "https://bitbucket.org/owner/repo/commits/789xyz123"),
    ("https://github.com/owner/repo.git", "abc123", "https://github.com/owner/repo/commit/abc123"),
    ("git@gitlab.com:owner/repo.git", "def456", "https://gitlab.com/owner/repo/-/commit/def456"),
    ("https://github.com/test/repo", "testcommit123", "https://github.com/test/repo/commit/testcommit123"),
    ("https://github.com/test/repo", "testcommit789", "https://github.com/test/repo/commit/testcommit789"),
    ("https://github.com/owner/repo.git", "any", "https://github.com/owner/repo/commit/any"),
]  # fmt: skip


@pytest.mark.parametrize(("repo", "commit", "url"), REFERENCE_HASHES)
async def test_runs_with_any_commit_hash_are_stored_with_their_urls(
    api, new_run, repo, commit, url
):
    run = new_run(git_repo=repo, git_commit_hash=commit)
    await api.create(run)
    stored = await api.run(run["event_id"])
    assert stored["git_commit_hash"] == commit
    assert stored["commit_url"] == url
    link = await api.get(path(run["event_id"], "/commit-url"))
    assert link.body["commit_url"] == url


@pytest.mark.parametrize("source", ["manual", "llm", "ci"])
async def test_associate_commit_takes_the_reference_hashes(api, new_run, source):
    run = new_run(git_repo="https://github.com/o/r")
    await api.create(run)
    reply = await send(
        api, "POST", path(run["event_id"], "/associate-commit"),
        associate_body(f"abc123456789{source}", source),
    )  # fmt: skip
    assert client_fallback("associate", reply.status, reply.body) is None, reply.body
    assert reply.body["commit_hash"] == f"abc123456789{source}"
    stored = await api.run(run["event_id"])
    assert stored["commit_url"] == f"https://github.com/o/r/commit/abc123456789{source}"


async def test_a_hostile_hash_stays_inside_its_url_segment(api, new_run):
    hostile = "x/../../evil?next=https://evil.example#top"
    run = new_run(git_repo="https://github.com/o/r", git_commit_hash=hostile)
    await api.create(run)
    stored = await api.run(run["event_id"])
    assert stored["git_commit_hash"] == hostile
    assert stored["commit_url"] == "https://github.com/o/r/commit/" + quote(hostile, safe="")


@pytest.mark.parametrize("value", ["abc 1234", "abc\n1234", "\u2028abcdef", "a" * 256, ""])
async def test_git_commit_hash_with_whitespace_controls_or_too_long_is_422(api, new_run, value):
    reply = await api.post("/api/v1/runs", json=new_run(git_commit_hash=value))
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", "git_commit_hash"]


# ---- 3. JSON objects sent as JSON text --------------------------------------------------------


@pytest.mark.parametrize("field", ["metrics_json", "context_json"])
async def test_json_text_is_stored_as_the_object(api, field):
    wire = WireRun("compat-agent", "json-text", **{field: json.dumps({"a": 1, "b": [1, {"c": 2}]})})
    await started(api, wire)
    assert (await api.run(wire.event_id))[field] == {"a": 1, "b": [1, {"c": 2}]}
    reply = await api.patch(path(wire.event_id), json={field: '{"after": true}'})
    assert reply.status == 200
    assert (await api.run(wire.event_id))[field] == {"after": True}


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "42", "null", '"{}"', ""])
@pytest.mark.parametrize("field", ["metrics_json", "context_json"])
async def test_other_json_text_is_422_naming_the_field(api, new_run, field, text):
    reply = await api.post("/api/v1/runs", json=new_run(**{field: text}))
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", field]
    run = new_run()
    await api.create(run)
    patch = await api.patch(path(run["event_id"]), json={"status": "success", field: text})
    assert patch.status == 422
    assert patch.body["detail"][0]["loc"] == ["body", field]
    assert (await api.run(run["event_id"]))["status"] == "running"


def nested_object(levels: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return dict(value)


async def test_json_text_obeys_the_body_depth_limit_as_inline_json_does(make_api, new_run):
    """max_json_depth=8: the body is level 1, so metrics_json may hold 7 levels, inline or
    as text; one more is refused either way (400 inline, 422 naming the field as text)."""
    api = await make_api(max_json_depth=8)
    for form in (nested_object(7), json.dumps(nested_object(7))):
        run = new_run(metrics_json=form)
        await api.create(run)
        assert (await api.run(run["event_id"]))["metrics_json"] == nested_object(7)
    assert (
        await api.post("/api/v1/runs", json=new_run(metrics_json=nested_object(8)))
    ).status == 400
    text = await api.post("/api/v1/runs", json=new_run(metrics_json=json.dumps(nested_object(8))))
    assert text.status == 422
    assert text.body["detail"][0]["loc"] == ["body", "metrics_json"]
    # in a batch the item is level 2: one level less for its fields
    ok, deep = (
        new_run(metrics_json=json.dumps(nested_object(6))),
        new_run(metrics_json=json.dumps(nested_object(7))),
    )
    reply = await api.post("/api/v1/runs/batch", json=[ok, deep])
    assert reply.status == 200
    assert reply.body["inserted"] == 1
    assert [error["index"] for error in reply.body["errors"]] == [1]
    assert "metrics_json" in reply.body["errors"][0]["message"]


@pytest.mark.parametrize("levels", [10_000, 200_000])
async def test_json_text_nested_ten_thousand_levels_is_refused_cleanly(api, new_run, levels):
    text = '{"a":' * levels + "1" + "}" * levels
    reply = await api.post("/api/v1/runs", json=new_run(context_json=text))
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", "context_json"]
    assert (await api.get("/health")).status == 200


# ---- 4. names are ordinary text -----------------------------------------------------------------


@pytest.mark.parametrize("name", ORDINARY_NAMES)
async def test_unicode_names_round_trip_by_path_and_filter(api, name):
    """POST (ASCII-escaped, as requests sends), GET by path, list by filter, PATCH by path."""
    wire = WireRun(name, name, run_id=f"{name}-run", **{"product": name})
    wire.record["event_id"] = f"{name}-{wire.event_id}"
    await started(api, wire)
    stored = await api.run(quote(wire.event_id, safe=""))
    assert (stored["event_id"], stored["agent_name"], stored["job_type"], stored["run_id"]) == (
        wire.event_id,
        name,
        name,
        f"{name}-run",
    )
    listed = await api.list(agent_name=name)
    assert [run["event_id"] for run in listed] == [wire.event_id]
    assert [run["event_id"] for run in await api.list(job_type=name)] == [wire.event_id]
    reply = await send(api, "PATCH", path(wire.event_id), wire.end_body("success"))
    assert reply.status == 200, reply.body
    metadata = await api.get("/api/v1/metadata")
    assert name in metadata.body["agent_names"]


@pytest.mark.parametrize(
    "name", ["", "  ", "\u200b", "a/b", "x\x00", "x\x1b", "x\x7f", "x\x85", "x\u2028", "x" * 256]
)
@pytest.mark.parametrize("field", ["event_id", "run_id", "agent_name", "job_type"])
async def test_bad_names_are_422_naming_the_field(api, new_run, field, name):
    reply = await api.post("/api/v1/runs", json=new_run(**{field: name}))
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", field]
