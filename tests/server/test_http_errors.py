"""The error boundary: every bad input is a clear 4xx JSON error, never a 500 or a trace."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest

WRITE_ENDPOINTS = (
    ("POST", "/api/v1/runs"),
    ("PATCH", "/api/v1/runs/{event_id}"),
    ("POST", "/api/v1/runs/{event_id}/associate-commit"),
    ("POST", "/api/v1/runs/batch"),
    ("POST", "/api/v1/runs/batch?mode=upsert"),
)

VALID = {
    "event_id": "hostile-1",
    "run_id": "r",
    "agent_name": "a",
    "job_type": "j",
    "start_time": "2026-01-12T10:30:00Z",
}


def nested(depth, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def with_field(field, value):
    return {**VALID, field: value}


# Raw bodies: bytes sent as they are.
HOSTILE_RAW = [
    b"",
    b" ",
    b"{",
    b"}",
    b"[",
    b"nul",
    b"\xff\xfe\x00",
    b"\xef\xbb\xbf{}",
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b'{"a":1e400}',
    b'{"a":"\\ud800"}',
    b'{"a":1,}',
    b"{'a':1}",
    b'{"event_id":"x"}{"event_id":"y"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 200 + b"1" + b"}" * 200,
    b"\x00" * 64,
]
# JSON documents: serialised then sent.
HOSTILE_JSON = [
    None,
    True,
    0,
    -1,
    "string",
    [],
    {},
    [None],
    [[]],
    [{}],
    [1, "a", None, True, []],
    {"": ""},
    {"status": None},
    {"status": ["success"]},
    {"status": {"$ne": "x"}},
    {"commit_hash": None, "commit_source": None},
    {"commit_hash": "a" * 10_000, "commit_source": "llm"},
    with_field("event_id", "x" * 100_000),
    with_field("event_id", "../../etc/passwd"),
    with_field("agent_name", "'; DROP TABLE agent_runs; --"),
    with_field("start_time", "2026-01-12T10:30:00Z" * 50),
    with_field("start_time", "+999999999-01-01T00:00:00Z"),
    with_field("start_time", "0000-00-00T00:00:00Z"),
    with_field("start_time", {"$date": 1}),
    with_field("items_discovered", 2**64 + 1),
    with_field("items_discovered", -(2**70)),
    with_field("items_discovered", 1e308),
    with_field("duration_ms", "NaN"),
    with_field("metrics_json", nested(20)),
    with_field("metrics_json", {"k" * 1000: "v" * 1000}),
    with_field("metrics_json", {"big": 2**64 + 5}),
    with_field("context_json", {"nul": "\x00", "ctl": "\x1b[31m"}),
    with_field("git_commit_hash", "zzzzzzz"),
    with_field("git_commit_source", "root"),
    with_field("git_repo", "javascript:alert(1)"),
    with_field("created_at", "2026-01-12"),
    [with_field("event_id", None)],
    [VALID, VALID, "x", 1, None],
    [{"event_id": "u", "create": "x", "update": []}],
    [{"event_id": "u", "update": {"status": "running", "extra": 1}}],
    [{"event_id": "u", "create": {**VALID, "event_id": "u"}, "update": {"agent_name": None}}],
    nested(31, {}),
    nested(40, {}),
]


def hostile_cases():
    for index, raw in enumerate(HOSTILE_RAW):
        yield pytest.param(raw, id=f"raw{index}")
    for index, document in enumerate(HOSTILE_JSON):
        # stdlib json: it writes integers beyond 64 bits, which orjson refuses
        yield pytest.param(json.dumps(document).encode(), id=f"json{index}")


@pytest.mark.parametrize("body", list(hostile_cases()))
async def test_hostile_bodies_never_cause_5xx(api, new_run, body):
    """Every write endpoint answers a hostile body with <500 and, for errors, a JSON detail."""
    run = new_run(event_id="target-run")
    await api.create(run)
    for method, template in WRITE_ENDPOINTS:
        path = template.format(event_id=run["event_id"])
        for content_type in ("application/json", "text/plain"):
            reply = await api.request(
                method, path, data=body, headers={"Content-Type": content_type}
            )
            assert reply.status < 500, (method, path, reply.status, reply.text[:300])
    assert (await api.get("/health")).body["status"] == "ok"


async def test_malformed_json_is_400(api):
    """Bad JSON syntax is 400 malformed_json with a message."""
    reply = await api.post("/api/v1/runs", data=b'{"event_id": ', headers={})
    assert reply.status == 400
    assert reply.body["error"] == "malformed_json"
    assert "JSON" in reply.body["detail"]


async def test_deep_nesting_is_400(api, new_run):
    """A body nested deeper than max_json_depth is refused with 400."""
    reply = await api.post("/api/v1/runs", json=new_run(metrics_json={"a": nested(40)}))
    assert reply.status == 400
    assert reply.body["error"] == "malformed_json"
    assert "deeper" in reply.body["detail"]


async def test_nesting_within_limit_is_accepted(make_api, new_run):
    """Nesting up to max_json_depth (the body itself counted) is stored and returned intact."""
    api = await make_api(max_json_depth=8)
    deep = nested(5, {"leaf": True})  # body(1) > metrics_json(2) > key(3) > 5 lists > leaf obj
    run = new_run(metrics_json={"k": deep})
    await api.create(run)
    assert (await api.run(run["event_id"]))["metrics_json"] == {"k": deep}
    too_deep = new_run(metrics_json={"k": nested(6, {"leaf": True})})
    assert (await api.post("/api/v1/runs", json=too_deep)).status == 400


async def test_body_over_max_body_bytes_is_413(make_api, new_run):
    """A body larger than max_body_bytes is 413 JSON and nothing is stored."""
    api = await make_api(max_body_bytes=2048)
    run = new_run(error_details="x" * 4000)
    reply = await api.post("/api/v1/runs", json=run)
    assert reply.status == 413
    assert reply.body["error"] == "payload_too_large"
    assert (await api.get(f"/api/v1/runs/{run['event_id']}")).status == 404
    small = new_run(error_details="x" * 100)
    assert (await api.post("/api/v1/runs", json=small)).status == 201


async def test_oversized_chunked_body_is_413(make_api):
    """A chunked body (no Content-Length) that grows past the cap is also a 413."""
    api = await make_api(max_body_bytes=2048)

    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    async with api.client.post("/api/v1/runs/batch", data=chunks()) as response:
        assert response.status == 413
        body = await response.json()
        assert body["error"] == "payload_too_large"


@pytest.mark.parametrize(
    "path", ["/", "/api", "/api/v1", "/api/v2/runs", "/api/v1/runs/x/y/z", "/favicon.ico"]
)
async def test_unknown_route_is_404_json(api, path):
    """Unknown routes answer a JSON 404."""
    reply = await api.get(path)
    assert reply.status == 404
    assert reply.body["error"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/v1/runs/x"),
        ("PUT", "/api/v1/runs/x"),
        ("PUT", "/api/v1/runs"),
        ("DELETE", "/api/v1/runs"),
        ("PATCH", "/api/v1/runs"),
        ("POST", "/api/v1/runs/x"),
        ("GET", "/api/v1/runs/x/associate-commit"),
        ("POST", "/health"),
        ("POST", "/metrics"),
        ("POST", "/api/v1/metadata"),
        ("DELETE", "/api/v1/runs/x/commit-url"),
    ],
)
async def test_wrong_method_is_405_json(api, method, path):
    """A known route with the wrong method answers a JSON 405 with an Allow header."""
    reply = await api.request(method, path)
    assert reply.status == 405, reply.body
    assert reply.body["error"] == "method_not_allowed"
    assert reply.headers.get("Allow")


async def test_error_bodies_share_one_shape(api, new_run):
    """400, 404, 405, 413, 422 all answer {detail, error} JSON."""
    await api.create(new_run(event_id="shape"))
    replies = [
        await api.post("/api/v1/runs", data=b"{"),
        await api.get("/nope"),
        await api.request("DELETE", "/api/v1/runs/shape"),
        await api.patch("/api/v1/runs/shape", json={"status": "failed"}),
        await api.patch("/api/v1/runs/unknown", json={"status": "failure"}),
    ]
    for reply in replies:
        assert set(reply.body) == {"detail", "error"}, reply.body
        assert isinstance(reply.body["error"], str)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "s3cr3t-status"),
        ("agent_name", "s3cr3t/agent"),
        ("git_commit_hash", "s3cr3t hash"),
        ("git_commit_source", "s3cr3t-source"),
    ],
)
async def test_validation_errors_do_not_echo_input(api, new_run, field, value):
    """422 entries carry loc/msg/type only; the offending value is not echoed back."""
    reply = await api.post("/api/v1/runs", json=new_run(**{field: value}))
    assert reply.status == 422
    assert "s3cr3t" not in reply.text
    assert set(reply.body["detail"][0]) == {"loc", "msg", "type"}


async def test_timestamp_errors_do_not_echo_input(api, new_run):
    """A rejected timestamp is not echoed back in the 422 message."""
    reply = await api.post("/api/v1/runs", json=new_run(start_time="s3cr3t-timestamp"))
    assert reply.status == 422
    assert "s3cr3t" not in reply.text


async def test_body_read_regardless_of_content_type(api, new_run):
    """A JSON body sent without application/json (curl without -H) is still parsed."""
    run = new_run()
    reply = await api.post(
        "/api/v1/runs", data=orjson.dumps(run), headers={"Content-Type": "text/plain"}
    )
    assert reply.status == 201


async def test_many_concurrent_hostile_and_valid_requests(api, new_run):
    """A burst mixing valid and invalid writes answers each correctly and stores the valid ones."""
    runs = [new_run() for _ in range(20)]
    bad = [b"{", orjson.dumps({"event_id": 1}), orjson.dumps([1])]
    tasks = [api.post("/api/v1/runs", json=run) for run in runs]
    tasks += [api.post("/api/v1/runs", data=body) for body in bad * 5]
    replies = await asyncio.gather(*tasks)
    assert [reply.status for reply in replies[:20]] == [201] * 20
    assert all(400 <= reply.status < 500 for reply in replies[20:])
    assert len(await api.list()) == 20


async def raw_http(api, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def test_undecodable_content_encoding_is_400(api):
    """A body whose Content-Encoding cannot be decoded is a 400, not a 500."""
    raw = await raw_http(
        api,
        b"POST /api/v1/runs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: 9\r\n\r\nnot-gzip!",
    )
    assert status_of(raw) == 400, raw


async def test_invalid_percent_encoding_in_path_and_query_is_not_5xx(api):
    """Undecodable %-escapes in the path or query are answered without a 5xx."""
    for target in (b"/api/v1/runs/%ff%fe", b"/api/v1/runs?agent_name=%ff", b"/api/v1/runs/a%00b"):
        raw = await raw_http(
            api, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert status_of(raw) < 500, raw
        assert b"Traceback" not in raw
