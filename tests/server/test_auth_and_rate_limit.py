"""Bearer auth and per-client rate limiting, switched on through the config."""

from __future__ import annotations

import asyncio

import pytest

TOKEN = "t0ken-for-tests"
GOOD = {"Authorization": f"Bearer {TOKEN}"}

WRITES = (
    ("POST", "/api/v1/runs"),
    ("PATCH", "/api/v1/runs/{event_id}"),
    ("POST", "/api/v1/runs/{event_id}/associate-commit"),
    ("POST", "/api/v1/runs/batch"),
    ("POST", "/api/v1/runs/batch?mode=upsert"),
)
READS = (
    "/api/v1/runs",
    "/api/v1/runs/{event_id}",
    "/api/v1/runs/{event_id}/commit-url",
    "/api/v1/runs/{event_id}/repo-url",
    "/api/v1/metadata",
    "/api/v1/stats",
)


def write_body(method, path, run):
    if path.endswith("associate-commit"):
        return {"commit_hash": "abcdef1", "commit_source": "ci"}
    if method == "PATCH":
        return {"status": "success"}
    if "upsert" in path:
        return [{"event_id": run["event_id"], "update": {"items_failed": 1}}]
    if path.endswith("batch"):
        return [run]
    return run


@pytest.fixture
async def secured(make_api):
    return await make_api(auth_enabled=True, auth_token=TOKEN)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Token {TOKEN}"},
        {"X-Api-Key": TOKEN},
    ],
)
async def test_writes_need_the_token(secured, new_run, headers):
    """Every write without a valid bearer token is 401 with WWW-Authenticate: Bearer."""
    run = new_run()
    await secured.create(run, headers=GOOD)
    for method, template in WRITES:
        path = template.format(event_id=run["event_id"])
        reply = await secured.request(
            method, path, json=write_body(method, path, run), headers=headers
        )
        assert reply.status == 401, (method, path, reply.body)
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert reply.body["error"] == "unauthorized"
        assert TOKEN not in reply.text
    assert (await secured.run(run["event_id"]))["status"] == "running"


async def test_writes_with_the_token_succeed(secured, new_run):
    """With the right token every write goes through (scheme case-insensitive)."""
    run = new_run()
    await secured.create(run, headers={"Authorization": f"bearer {TOKEN}"})
    for method, template in WRITES[1:]:
        path = template.format(event_id=run["event_id"])
        reply = await secured.request(
            method, path, json=write_body(method, path, run), headers=GOOD
        )
        assert reply.status == 200, (method, path, reply.body)


async def test_auth_checked_before_validation(secured):
    """An unauthenticated invalid body is a 401, not a 422 (no probing without a token)."""
    reply = await secured.post("/api/v1/runs", json={"bad": 1})
    assert reply.status == 401


async def test_reads_open_by_default_with_auth(secured, new_run):
    """With auth on but reads unprotected, every read works without a token."""
    run = new_run()
    await secured.create(run, headers=GOOD)
    for template in READS:
        reply = await secured.get(template.format(event_id=run["event_id"]))
        assert reply.status == 200, template


async def test_protect_reads_requires_the_token_on_reads(make_api, new_run):
    """With auth_protect_reads, reads need the token too; with it they work."""
    api = await make_api(auth_enabled=True, auth_token=TOKEN, auth_protect_reads=True)
    run = new_run()
    await api.create(run, headers=GOOD)
    for template in READS:
        path = template.format(event_id=run["event_id"])
        reply = await api.get(path)
        assert reply.status == 401, path
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert (await api.get(path, headers=GOOD)).status == 200


@pytest.mark.parametrize("protect_reads", [False, True])
async def test_health_and_metrics_stay_open(make_api, protect_reads):
    """/health and /metrics never need a token."""
    api = await make_api(auth_enabled=True, auth_token=TOKEN, auth_protect_reads=protect_reads)
    assert (await api.get("/health")).status == 200
    assert (await api.get("/metrics")).status == 200


async def test_auth_disabled_needs_no_header(api, new_run):
    """With auth off (the default), writes need no Authorization header at all."""
    await api.create(new_run())


async def test_unknown_route_with_auth_is_not_a_500(secured):
    """Unknown routes under auth answer a 4xx JSON error."""
    reply = await secured.post("/api/v1/nothing", json={})
    assert reply.status in (401, 404)


async def test_non_ascii_token_is_compared_safely(make_api, new_run):
    """A non-ASCII configured token works and a non-ASCII wrong token is a 401."""
    api = await make_api(auth_enabled=True, auth_token="jéton-ü")
    run = new_run()
    reply = await api.post("/api/v1/runs", json=run, headers={"Authorization": "Bearer jéton-x"})
    assert reply.status == 401
    await api.create(run, headers={"Authorization": "Bearer jéton-ü"})


async def test_undecodable_authorization_header_is_401(secured, new_run):
    """Authorization bytes that are not UTF-8 are a 401, never a 500."""
    body = b'{"event_id":"e","run_id":"r","agent_name":"a","job_type":"j","start_time":"2026-01-12T10:30:00Z"}'
    request = (
        b"POST /api/v1/runs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    reader, writer = await asyncio.open_connection(secured.client.host, secured.client.port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert raw.split(b" ", 2)[1] == b"401", raw


# ---- rate limiting -------------------------------------------------------------------


async def test_rate_limit_answers_429_with_headers(make_api, new_run):
    """Past rpm requests a client gets 429 with Retry-After and X-RateLimit-* headers."""
    api = await make_api(rate_limit_enabled=True, rate_limit_rpm=3)
    seen = []
    for _ in range(3):
        reply = await api.get("/api/v1/runs")
        assert reply.status == 200
        seen.append(int(reply.headers["X-RateLimit-Remaining"]))
        assert reply.headers["X-RateLimit-Limit"] == "3"
    assert seen == [2, 1, 0]
    limited = await api.get("/api/v1/runs")
    assert limited.status == 429
    assert limited.body["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Reset"]) >= 1
    limited_write = await api.post("/api/v1/runs", json=new_run())
    assert limited_write.status == 429


async def test_rate_limit_exempts_health_but_not_metrics(make_api):
    """/health is never rate limited; /metrics is limited like any other read."""
    api = await make_api(rate_limit_enabled=True, rate_limit_rpm=1)
    await api.get("/api/v1/runs")
    assert (await api.get("/api/v1/runs")).status == 429
    for _ in range(5):
        assert (await api.get("/health")).status == 200
    limited = await api.get("/metrics")
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1


async def test_rate_limit_off_by_default(api):
    """Without rate limiting, no X-RateLimit headers and no 429s."""
    for _ in range(70):
        reply = await api.get("/api/v1/metadata")
        assert reply.status == 200
    assert "X-RateLimit-Limit" not in reply.headers


async def test_rate_limit_counts_writes_too(make_api, new_run):
    """Writes spend the same budget as reads."""
    api = await make_api(rate_limit_enabled=True, rate_limit_rpm=2)
    assert (await api.post("/api/v1/runs", json=new_run())).status == 201
    assert (await api.post("/api/v1/runs", json=new_run())).status == 201
    assert (await api.post("/api/v1/runs", json=new_run())).status == 429


async def test_rate_limit_and_auth_together(make_api, new_run):
    """With both on, a rate-limited client gets 429 even with a valid token."""
    api = await make_api(
        auth_enabled=True, auth_token=TOKEN, rate_limit_enabled=True, rate_limit_rpm=1
    )
    assert (await api.post("/api/v1/runs", json=new_run(), headers=GOOD)).status == 201
    assert (await api.post("/api/v1/runs", json=new_run(), headers=GOOD)).status == 429
