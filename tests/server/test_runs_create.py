"""POST /api/v1/runs: idempotent creation, validation of every field, what is stored."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import orjson
import pytest

REQUIRED = ("event_id", "run_id", "agent_name", "job_type", "start_time")
COUNTERS = ("items_discovered", "items_succeeded", "items_failed", "items_skipped", "duration_ms")
TIMESTAMP_FIELDS = ("start_time", "end_time", "git_commit_timestamp", "created_at")


def field_errors(body, field):
    """The 422 entries of a FastAPI-shaped body whose location ends with field."""
    assert isinstance(body["detail"], list), body
    return [entry for entry in body["detail"] if entry["loc"][-1] == field]


async def test_create_answers_201_created_with_exact_body(api, new_run):
    """A new run is answered 201 with exactly {status: created, event_id, run_id}."""
    run = new_run()
    reply = await api.post("/api/v1/runs", json=run)
    assert reply.status == 201
    assert reply.body == {"status": "created", "event_id": run["event_id"], "run_id": run["run_id"]}


async def test_duplicate_create_answers_201_duplicate_with_exact_body(api, new_run):
    """A second POST with the same event_id is 201 with the guide's duplicate body."""
    run = new_run()
    await api.create(run)
    reply = await api.post("/api/v1/runs", json=run)
    assert reply.status == 201
    assert reply.body == {
        "status": "duplicate",
        "event_id": run["event_id"],
        "message": "Event already exists (idempotent)",
    }


async def test_duplicate_create_changes_nothing_stored(api, new_run):
    """A duplicate with different fields leaves the stored run untouched."""
    run = new_run(status="running", items_discovered=3)
    await api.create(run)
    before = await api.run(run["event_id"])
    await asyncio.sleep(0.002)
    changed = {**run, "status": "success", "items_discovered": 9, "agent_name": "other"}
    reply = await api.post("/api/v1/runs", json=changed)
    assert reply.body["status"] == "duplicate"
    assert await api.run(run["event_id"]) == before


async def test_concurrent_creates_of_one_event_id_give_one_created(api, new_run):
    """Racing POSTs of one event_id: exactly one is created, the rest are duplicates."""
    run = new_run()
    replies = await asyncio.gather(*(api.post("/api/v1/runs", json=run) for _ in range(8)))
    statuses = sorted(reply.body["status"] for reply in replies)
    assert all(reply.status == 201 for reply in replies)
    assert statuses == ["created"] + ["duplicate"] * 7
    assert len(await api.list()) == 1


async def test_created_run_defaults(api, new_run):
    """Status defaults to running and every counter to 0; updated_at and created_at are set."""
    run = new_run()
    await api.create(run)
    stored = await api.run(run["event_id"])
    assert stored["status"] == "running"
    for counter in COUNTERS:
        assert stored[counter] == 0
    assert stored["created_at"]
    assert stored["updated_at"]
    assert stored["end_time"] is None
    assert stored["metrics_json"] is None


async def test_every_optional_field_round_trips(api, new_run):
    """Each documented optional field given on POST comes back from GET unchanged."""
    optional = {
        "agent_owner": "team-a",
        "product": "seo-intelligence",
        "product_family": "content",
        "platform": "web",
        "subdomain": "blog",
        "website": "example.com",
        "website_section": "blog",
        "item_name": "how-to-optimize-seo",
        "input_summary": "in",
        "output_summary": "out",
        "source_ref": "src",
        "target_ref": "dst",
        "error_summary": "none",
        "error_details": "multi\nline",
        "git_repo": "https://github.com/myorg/myrepo",
        "git_branch": "main",
        "git_commit_hash": "abc1234567890",
        "git_run_tag": "v1.2.3",
        "host": "worker-1",
        "environment": "production",
        "trigger_type": "cron",
        "insight_id": "ins-1",
        "parent_run_id": "parent-1",
        "items_discovered": 100,
        "items_succeeded": 85,
        "items_failed": 10,
        "items_skipped": 5,
        "duration_ms": 5000,
        "metrics_json": {"input_tokens": 1500, "api_cost_usd": 0.05, "nested": {"a": [1, 2]}},
        "context_json": {"model": "claude", "features_enabled": ["code_review", "testing"]},
    }
    run = new_run(**optional)
    await api.create(run)
    stored = await api.run(run["event_id"])
    for field, value in optional.items():
        assert stored[field] == value, field


async def test_git_commit_fields_are_stored_on_post(api, new_run):
    """Unlike the reference, git_commit_source/author/timestamp sent on POST are kept."""
    run = new_run(
        git_commit_hash="ABCDEF1",
        git_commit_source="llm",
        git_commit_author="Claude Code <noreply@anthropic.com>",
        git_commit_timestamp="2026-01-12T10:35:00Z",
    )
    await api.create(run)
    stored = await api.run(run["event_id"])
    assert stored["git_commit_hash"] == "abcdef1"
    assert stored["git_commit_source"] == "llm"
    assert stored["git_commit_author"] == "Claude Code <noreply@anthropic.com>"
    assert stored["git_commit_timestamp"] == "2026-01-12T10:35:00.000000+00:00"


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("failed", "failure"), ("completed", "success"), ("succeeded", "success")],
)
async def test_status_aliases_are_normalised_on_post(api, new_run, alias, canonical):
    """The guide's aliases are accepted on POST and stored as the canonical status."""
    run = new_run(status=alias)
    await api.create(run)
    assert (await api.run(run["event_id"]))["status"] == canonical


@pytest.mark.parametrize(
    "status", ["running", "success", "failure", "partial", "timeout", "cancelled"]
)
async def test_canonical_statuses_accepted_on_post(api, new_run, status):
    """Each canonical status is stored as given."""
    run = new_run(status=status)
    await api.create(run)
    assert (await api.run(run["event_id"]))["status"] == status


@pytest.mark.parametrize("status", ["done", "FAILED", "Success", "", " running", None, 1])
async def test_unknown_status_is_422_naming_status(api, new_run, status):
    """A status that is neither canonical nor an alias is refused with a 422 naming status."""
    reply = await api.post("/api/v1/runs", json=new_run(status=status))
    assert reply.status == 422
    assert field_errors(reply.body, "status")


@pytest.mark.parametrize("field", REQUIRED)
async def test_missing_required_field_is_422_naming_it(api, new_run, field):
    """Leaving out any required field is a 422 whose detail names that field."""
    run = new_run()
    del run[field]
    reply = await api.post("/api/v1/runs", json=run)
    assert reply.status == 422
    entries = field_errors(reply.body, field)
    assert entries, reply.body
    assert entries[0]["loc"] == ["body", field]
    assert entries[0]["type"] == "missing"
    assert reply.body["error"] == "validation_error"


@pytest.mark.parametrize("field", REQUIRED)
async def test_null_required_field_is_422(api, new_run, field):
    """An explicit null for a required field is a 422 naming it."""
    reply = await api.post("/api/v1/runs", json=new_run(**{field: None}))
    assert reply.status == 422
    assert field_errors(reply.body, field)


async def test_nothing_is_stored_after_a_422(api, new_run):
    """A refused create leaves no row behind."""
    run = new_run(items_failed=-1)
    assert (await api.post("/api/v1/runs", json=run)).status == 422
    assert (await api.get(f"/api/v1/runs/{run['event_id']}")).status == 404


@pytest.mark.parametrize("field", TIMESTAMP_FIELDS)
@pytest.mark.parametrize(
    "value",
    [
        "2026-01-12 10:30:00",
        "2026-01-12T10:30:00",
        "2026-01-12T10:30:00.123456",
        "2026-01-12",
        "yesterday",
        "",
        "2026-13-12T10:30:00Z",
        "2026-01-12T10:30:00+25:00",
        "1768213800",
        1768213800,
        "2026-01-12T10:30:00." + "1" * 60 + "Z",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
    ],
)
async def test_timestamps_without_timezone_or_unparseable_are_422(api, new_run, field, value):
    """Every timestamp must be an ISO 8601 instant with a timezone, else 422 naming it."""
    reply = await api.post("/api/v1/runs", json=new_run(**{field: value}))
    assert reply.status == 422, reply.body
    assert field_errors(reply.body, field), reply.body


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2026-01-12T10:30:00Z", "2026-01-12T10:30:00.000000+00:00"),
        ("2026-01-12T10:30:00+00:00", "2026-01-12T10:30:00.000000+00:00"),
        ("2026-01-12T16:00:00+05:30", "2026-01-12T10:30:00.000000+00:00"),
        ("2026-01-12T05:30:00.5-05:00", "2026-01-12T10:30:00.500000+00:00"),
        ("2026-01-12T10:30:00.123456+00:00", "2026-01-12T10:30:00.123456+00:00"),
    ],
)
async def test_timestamps_are_stored_canonically_in_utc(api, new_run, given, stored):
    """Instants are stored as fixed-width UTC strings whatever offset they were sent in."""
    run = new_run(start_time=given, end_time=given)
    await api.create(run)
    got = await api.run(run["event_id"])
    assert got["start_time"] == stored
    assert got["end_time"] == stored


@pytest.mark.parametrize("counter", COUNTERS)
@pytest.mark.parametrize(
    "value", [-1, -(2**63), 2**63, 2**64 - 1, 2**64, 10**30, 1.5, 1.0, True, False, "5", [], {}]
)
async def test_bad_counters_are_422_never_500(api, new_run, counter, value):
    """Negative, too large (> 2**63-1), bool, float and string counters are refused with 422."""
    reply = await api.post("/api/v1/runs", json=new_run(**{counter: value}))
    assert reply.status == 422, reply.body
    assert field_errors(reply.body, counter), reply.body


@pytest.mark.parametrize("counter", COUNTERS)
async def test_counter_bounds_are_inclusive(api, new_run, counter):
    """0 and 2**63-1 are valid counters and come back exactly."""
    low, high = new_run(**{counter: 0}), new_run(**{counter: 2**63 - 1})
    await api.create(low)
    await api.create(high)
    assert (await api.run(low["event_id"]))[counter] == 0
    assert (await api.run(high["event_id"]))[counter] == 2**63 - 1


async def test_null_counters_default_to_zero(api, new_run):
    """An explicit null counter on POST is stored as 0."""
    run = new_run(**dict.fromkeys(COUNTERS))
    await api.create(run)
    stored = await api.run(run["event_id"])
    assert all(stored[counter] == 0 for counter in COUNTERS)


@pytest.mark.parametrize("field", ["event_id", "run_id", "agent_name", "job_type"])
@pytest.mark.parametrize(
    "value",
    ["", "   ", "a/b", "/", "tab\there", "new\nline", "nul\x00", "del\x7f", "x" * 256, 5, ["a"]],
)
async def test_bad_identifiers_are_422(api, new_run, field, value):
    """Identifiers must be non-empty strings of at most 255 chars without '/' or control chars."""
    reply = await api.post("/api/v1/runs", json=new_run(**{field: value}))
    assert reply.status == 422, reply.body
    assert field_errors(reply.body, field), reply.body


async def test_identifiers_allow_dots_dashes_and_unicode(api, new_run):
    """Dotted names, colons, spaces inside and non-ASCII letters are valid identifiers."""
    run = new_run(
        event_id="2026-01-12T10:30:00Z-my-agent-abc123",
        agent_name="seo_intelligence.insight_engine",
        job_type="Données à traiter",
        run_id="x" * 255,
    )
    await api.create(run)
    stored = await api.run(run["event_id"])
    assert stored["agent_name"] == "seo_intelligence.insight_engine"
    assert stored["job_type"] == "Données à traiter"


@pytest.mark.parametrize("value", ["abc 1234", "abc\x00def", "\tabcdef", "a" * 256, "", 1234567])
async def test_bad_git_commit_hash_on_post_is_422(api, new_run, value):
    """git_commit_hash is any revision (any VCS) up to 255 characters, but one visible token:
    empty, whitespace, controls, over 255 characters or a non-string are refused."""
    reply = await api.post("/api/v1/runs", json=new_run(git_commit_hash=value))
    assert reply.status == 422
    assert field_errors(reply.body, "git_commit_hash")


@pytest.mark.parametrize("value", ["human", "LLM", "", 1])
async def test_bad_git_commit_source_on_post_is_422(api, new_run, value):
    """git_commit_source is one of manual, llm, ci."""
    reply = await api.post("/api/v1/runs", json=new_run(git_commit_source=value))
    assert reply.status == 422
    assert field_errors(reply.body, "git_commit_source")


@pytest.mark.parametrize("field", ["metrics_json", "context_json"])
@pytest.mark.parametrize("value", [[], [1, 2], '"{}"', "[1]", "x", 1, True])
async def test_json_fields_must_be_objects(api, new_run, field, value):
    """metrics_json and context_json accept JSON objects, JSON text of an object, or null."""
    reply = await api.post("/api/v1/runs", json=new_run(**{field: value}))
    assert reply.status == 422
    assert field_errors(reply.body, field)


@pytest.mark.parametrize("field", ["metrics_json", "context_json"])
async def test_empty_json_objects_stay_objects(api, new_run, field):
    """{} round-trips as {} (not null, not a string)."""
    run = new_run(**{field: {}})
    await api.create(run)
    assert (await api.run(run["event_id"]))[field] == {}


async def test_unknown_fields_on_post_are_ignored(api, new_run):
    """Extra client bookkeeping fields (as the reference tolerates) do not fail a create."""
    run = new_run(api_posted=True, something_else={"x": 1})
    await api.create(run)
    stored = await api.run(run["event_id"])
    assert "api_posted" not in stored
    assert "something_else" not in stored


async def test_client_supplied_created_at_is_kept_canonically(api, new_run):
    """A created_at given by a forwarding sidecar is stored (canonical UTC)."""
    run = new_run(created_at="2026-01-12T16:00:00+05:30")
    await api.create(run)
    assert (await api.run(run["event_id"]))["created_at"] == "2026-01-12T10:30:00.000000+00:00"


async def test_body_must_be_a_json_object(api):
    """A JSON array or scalar body for a create is a 422, not a crash."""
    for body in ([], [1], "x", 1, None):
        reply = await api.post("/api/v1/runs", data=orjson.dumps(body))
        assert reply.status == 422, body


@pytest.mark.parametrize("char", ["\u00a0", "\u200b", "\u00ad", "\u2028", "\x85"])
async def test_every_accepted_event_id_is_reachable(api, new_run, char):
    """An event_id that POST accepts can be read and patched through its path."""
    run = new_run(event_id=f"id{char}x")
    reply = await api.post("/api/v1/runs", json=run)
    if reply.status == 422:
        return
    assert reply.status == 201
    path = "/api/v1/runs/" + quote(run["event_id"], safe="")
    assert (await api.get(path)).status == 200
    assert (await api.patch(path, json={"status": "success"})).status == 200
