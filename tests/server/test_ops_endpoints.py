"""/health, /metrics and /api/v1/metadata."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

import server
from tests.stored_rows import location


async def test_health_reports_guide_fields(make_api):
    """/health answers status ok, version, db_path, journal_mode and synchronous (on
    PostgreSQL: database_url, the URL without its password, and no SQLite modes)."""
    api = await make_api(synchronous="FULL")
    reply = await api.get("/health")
    assert reply.status == 200
    body = reply.body
    assert body["status"] == "ok"
    assert body["version"] == server.__version__ == "3.0.0"
    key, where = location(api)
    assert body[key] == where
    if key == "db_path":
        assert (body["backend"], body["journal_mode"], body["synchronous"]) == (
            "sqlite",
            "WAL",
            "FULL",
        )
    else:
        assert body["backend"] == "postgresql"
        assert "journal_mode" not in body


@pytest.mark.parametrize(
    ("journal_mode", "synchronous"),
    [("DELETE", "FULL"), ("TRUNCATE", "NORMAL"), ("WAL", "OFF"), ("WAL", "EXTRA")],
)
async def test_health_reports_configured_modes(make_api, journal_mode, synchronous):
    """The journal and synchronous modes in effect are the configured ones, as /health says."""
    api = await make_api(journal_mode=journal_mode, synchronous=synchronous)
    body = (await api.get("/health")).body
    assert body["journal_mode"] == journal_mode
    assert body["synchronous"] == synchronous


async def test_health_head_is_allowed(api):
    """HEAD /health answers 200 (load balancers probe with HEAD)."""
    assert (await api.request("HEAD", "/health")).status == 200


async def test_metrics_on_empty_database(api):
    """/metrics on an empty database: zero counts and a performance section."""
    reply = await api.get("/metrics")
    assert reply.status == 200
    body = reply.body
    assert body["total_runs"] == 0
    assert body["agents"] == {}
    assert body["recent_24h"] == 0
    key, where = location(api)
    assert body["performance"][key] == where
    if key == "db_path":
        assert body["performance"]["journal_mode"] == "WAL"


async def test_metrics_counts_runs_agents_and_recent_instants(api, new_run):
    """total_runs, per-agent counts, and recent_24h computed on instants (any offset)."""
    now = datetime.now(UTC)
    plus_0530 = timezone(timedelta(hours=5, minutes=30))
    minus_10 = timezone(timedelta(hours=-10))
    runs = [
        new_run(agent_name="a", created_at=(now - timedelta(hours=1)).isoformat()),
        new_run(
            agent_name="a", created_at=(now - timedelta(hours=1)).astimezone(minus_10).isoformat()
        ),
        new_run(agent_name="b", created_at=(now - timedelta(hours=23)).isoformat()),
        new_run(agent_name="b", created_at=(now - timedelta(hours=25)).isoformat()),
        new_run(
            agent_name="c", created_at=(now - timedelta(hours=25)).astimezone(plus_0530).isoformat()
        ),
        new_run(agent_name="c", created_at=(now - timedelta(days=30)).isoformat()),
    ]
    await api.post("/api/v1/runs/batch", json=runs)
    await api.create(new_run(agent_name="a"))
    body = (await api.get("/metrics")).body
    assert body["total_runs"] == 7
    assert body["agents"] == {"a": 3, "b": 2, "c": 2}
    assert body["recent_24h"] == 4


#: Names JSON must escape or that look like JSON (control characters and line separators
#: are refused as identifiers, so they never reach the counts).
HOSTILE_AGENTS = [
    'q"uote',
    "back\\slash",
    "\u00e9t\u00e9",
    "\U0001f600",
    "<script>",
    '{"x":1}',
    "a,b:c",
    "\ufeffbom",
    "null",
    "'); DROP TABLE agent_runs; --",
]


async def test_metrics_agents_survive_hostile_names_busiest_first(api, new_run):
    """Agent names that JSON must escape (quotes, backslashes) or that look like JSON or
    markup, non-ASCII ones included, come back exact, busiest first, ties by name,
    and stay so as counts change (the answer splices pre-serialised entries)."""
    runs = [
        new_run(agent_name=name) for i, name in enumerate(HOSTILE_AGENTS) for _ in range(i % 3 + 1)
    ]
    reply = await api.post("/api/v1/runs/batch", json=runs)
    assert (reply.status, reply.body["inserted"]) == (200, len(runs))
    expected = {name: i % 3 + 1 for i, name in enumerate(HOSTILE_AGENTS)}
    body = (await api.get("/metrics")).body
    order = sorted(expected.items(), key=lambda item: (-item[1], item[0]))
    assert list(body["agents"].items()) == order
    await api.post("/api/v1/runs/batch", json=[new_run(agent_name='q"uote') for _ in range(5)])
    expected['q"uote'] += 5
    order = sorted(expected.items(), key=lambda item: (-item[1], item[0]))
    assert list((await api.get("/metrics")).body["agents"].items()) == order
    assert (await api.get("/metrics")).body["total_runs"] == sum(expected.values())


@pytest.mark.parametrize("offset_hours", [-10, -5, 5.5, 14])
async def test_recent_24h_is_offset_independent(api, new_run, offset_hours):
    """A run 23h old counts and one 25h old does not, whatever offset created_at used."""
    zone = timezone(timedelta(hours=offset_hours))
    now = datetime.now(UTC)
    runs = [
        new_run(created_at=(now - timedelta(hours=23)).astimezone(zone).isoformat()),
        new_run(created_at=(now - timedelta(hours=25)).astimezone(zone).isoformat()),
    ]
    await api.post("/api/v1/runs/batch", json=runs)
    assert (await api.get("/metrics")).body["recent_24h"] == 1


async def test_metadata_lists_distinct_sorted_values_with_counts(api, new_run):
    """Distinct agent names and job types, with their counts."""
    await api.post(
        "/api/v1/runs/batch",
        json=[
            new_run(agent_name="b", job_type="j2"),
            new_run(agent_name="a", job_type="j1"),
            new_run(agent_name="b", job_type="j1"),
        ],
    )
    reply = await api.get("/api/v1/metadata")
    assert reply.status == 200
    assert reply.body == {
        "agent_names": ["a", "b"],
        "job_types": ["j1", "j2"],
        "counts": {"agent_names": 2, "job_types": 2},
        "cache_hit": True,
    }


async def test_metadata_empty_database(api):
    """No runs: empty lists and zero counts."""
    body = (await api.get("/api/v1/metadata")).body
    assert body["agent_names"] == []
    assert body["job_types"] == []
    assert body["counts"] == {"agent_names": 0, "job_types": 0}


async def test_metadata_is_served_from_memory(api, new_run):
    """Every answer comes from the writer's in-memory values: cache_hit is always true."""
    await api.create(new_run())
    assert (await api.get("/api/v1/metadata")).body["cache_hit"] is True
    second = (await api.get("/api/v1/metadata")).body
    assert second["cache_hit"] is True
    assert second["agent_names"] == ["test-agent"]


async def test_metadata_cache_survives_writes_with_known_values(api, new_run):
    """Creates, batches, patches and upserts that add no new value keep the cache."""
    first = new_run()
    await api.create(first)
    await api.get("/api/v1/metadata")
    await api.create(new_run())
    await api.post("/api/v1/runs/batch", json=[new_run(), first])
    await api.patch(f"/api/v1/runs/{first['event_id']}", json={"status": "success"})
    await api.post(
        "/api/v1/runs/batch?mode=upsert",
        json=[{"event_id": first["event_id"], "update": {"items_failed": 1}}],
    )
    assert (await api.get("/api/v1/metadata")).body["cache_hit"] is True


@pytest.mark.parametrize("field", ["agent_name", "job_type"])
@pytest.mark.parametrize("via", ["create", "batch", "upsert", "patch"])
async def test_metadata_has_a_new_value_right_after_the_write(api, new_run, field, via):
    """Any write that adds a new agent_name or job_type shows in the next answer."""
    existing = new_run()
    await api.create(existing)
    await api.get("/api/v1/metadata")
    assert (await api.get("/api/v1/metadata")).body["cache_hit"] is True
    fresh = new_run(**{field: "brand-new"})
    if via == "create":
        await api.create(fresh)
    elif via == "batch":
        await api.post("/api/v1/runs/batch", json=[fresh])
    elif via == "upsert":
        await api.post(
            "/api/v1/runs/batch?mode=upsert",
            json=[{"event_id": fresh["event_id"], "create": fresh}],
        )
    else:
        await api.patch(f"/api/v1/runs/{existing['event_id']}", json={field: "brand-new"})
    body = (await api.get("/api/v1/metadata")).body
    assert body["cache_hit"] is True
    assert "brand-new" in body[f"{field}s"]


async def test_metadata_rename_away_removes_value(api, new_run):
    """Renaming the only run of an agent removes the old name from metadata."""
    run = new_run(agent_name="old")
    await api.create(run)
    assert (await api.get("/api/v1/metadata")).body["agent_names"] == ["old"]
    await api.patch(f"/api/v1/runs/{run['event_id']}", json={"agent_name": "new"})
    assert (await api.get("/api/v1/metadata")).body["agent_names"] == ["new"]


async def test_metadata_ttl_setting_is_accepted_and_ignored(make_api, new_run):
    """TELEMETRY_METADATA_CACHE_TTL_S (deprecated) still parses; answers stay current."""
    api = await make_api(metadata_ttl_s=0)
    await api.create(new_run(agent_name="x"))
    body = (await api.get("/api/v1/metadata")).body
    assert (body["agent_names"], body["cache_hit"]) == (["x"], True)
