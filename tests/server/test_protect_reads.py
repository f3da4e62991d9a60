"""TELEMETRY_API_AUTH_PROTECT_READS covers every read of run data, /health and /metrics too."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.stored_rows import location

TOKEN = "s3cret-token-for-reads"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
NOT_GOOD: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"},
]
SECRET_AGENTS = ("payroll-agent", "secret-project-bot")
PROMETHEUS = {"Accept": "text/plain;version=0.0.4"}


@pytest.fixture
async def protected(make_api: Any, new_run: Any) -> Any:
    api = await make_api(auth_enabled=True, auth_token=TOKEN, auth_protect_reads=True)
    for agent in SECRET_AGENTS:
        await api.create(new_run(agent_name=agent), headers=GOOD)
    return api


async def scrape(api: Any, headers: dict[str, str]) -> str:
    response = await api.client.get("/metrics", headers={**PROMETHEUS, **headers})
    assert response.status == 200
    text = await response.text()
    list(text_string_to_metric_families(text))  # valid exposition
    return text


@pytest.mark.parametrize("headers", NOT_GOOD)
async def test_metrics_json_without_token_has_counts_but_no_names(protected, headers):
    """Without a valid token /metrics JSON keeps the counts, drops agent names and path."""
    reply = await protected.get("/metrics", headers=headers)
    assert reply.status == 200
    assert reply.body["total_runs"] == 2
    assert reply.body["runs_by_status"] == {"running": 2}
    assert reply.body["recent_24h"] == 2
    assert "agents" not in reply.body
    key, where = location(protected)
    assert key not in reply.body["performance"]
    for secret in (*SECRET_AGENTS, "t.sqlite", where):
        assert secret not in reply.text


async def test_metrics_json_with_token_has_everything(protected):
    """With the token: agent names with their counts, and the database path."""
    reply = await protected.get("/metrics", headers=GOOD)
    assert reply.body["agents"] == dict.fromkeys(SECRET_AGENTS, 1)
    key, where = location(protected)
    assert reply.body["performance"][key] == where


@pytest.mark.parametrize("headers", [*NOT_GOOD, GOOD])
async def test_prometheus_never_carries_names_or_paths(protected, headers):
    """The Prometheus form has the counts, and never an agent name or a path (with or
    without the token: agent names are never labels)."""
    text = await scrape(protected, headers)
    assert "telemetry_runs_total_stored 2.0" in text
    for secret in (*SECRET_AGENTS, "t.sqlite", "/tmp", location(protected)[1]):
        assert secret not in text


@pytest.mark.parametrize("headers", NOT_GOOD)
async def test_health_without_token_has_no_path(protected, headers):
    """Without a valid token /health answers ok (never 401) but leaves out db_path."""
    reply = await protected.get("/health", headers=headers)
    assert reply.status == 200
    assert reply.body["status"] == "ok"
    key, where = location(protected)
    assert key not in reply.body
    assert where not in reply.text
    assert "t.sqlite" not in reply.text


async def test_health_with_token_has_the_path(protected):
    """With the token, /health includes db_path as the guide has it (on PostgreSQL, the
    URL without its password: database_url)."""
    reply = await protected.get("/health", headers=GOOD)
    key, where = location(protected)
    assert reply.body[key] == where


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/runs",
        "/api/v1/metadata",
        "/api/v1/runs/x",
        "/api/v1/runs/x/commit-url",
        "/api/v1/stats?group_by=agent_name",
    ],
)
async def test_run_reads_need_the_token(protected, path):
    """Every other read of run data is 401 without the token."""
    for headers in NOT_GOOD:
        assert (await protected.get(path, headers=headers)).status == 401
    assert (await protected.get(path, headers=GOOD)).status in (200, 404)


async def test_without_protect_reads_everything_stays_open(make_api, new_run):
    """Protection off (the default): /metrics names agents and /health shows the path."""
    api = await make_api(auth_enabled=True, auth_token=TOKEN)
    await api.create(new_run(agent_name="open-agent"), headers=GOOD)
    assert (await api.get("/metrics")).body["agents"] == {"open-agent": 1}
    key, where = location(api)
    assert (await api.get("/health")).body[key] == where
