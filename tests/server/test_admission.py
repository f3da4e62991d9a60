"""Admission control on the server: requests and body bytes in flight are bounded; beyond
either bound a request is answered 503 with Retry-After before its body is read, and
changes nothing; what a request holds is given back however it ends."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from admission_helpers import (
    CHUNKED_HEAD,
    KIB,
    Served,
    assert_busy,
    json_head,
    padded,
    until,
)
from structlog.testing import capture_logs

from server.app import create_app
from server.config import ConfigError, ServerConfig
from server.contract.errors import ServiceUnavailable
from server.edge.admission import Admission
from server.http.runs import DATABASE

# ---- the counter itself -------------------------------------------------------------------


def test_admission_counts_requests_and_bytes_and_refuses_beyond_either_bound() -> None:
    """admit() takes a request and its bytes, or raises 503 taking nothing; release gives back."""
    admission = Admission(max_requests=2, max_bytes=100)
    first = admission.admit(60)
    with pytest.raises(ServiceUnavailable) as refused:
        admission.admit(41)  # 60 + 41 > 100
    assert refused.value.headers["Retry-After"] == "1"
    assert (admission.requests, admission.bytes) == (1, 60)
    second = admission.admit(40)
    with pytest.raises(ServiceUnavailable):
        admission.admit(0)  # two requests already
    assert (admission.requests, admission.bytes, admission.refused) == (2, 100, 2)
    admission.release(first)
    admission.release(first)  # idempotent
    admission.release(second)
    assert (admission.requests, admission.bytes) == (0, 0)


def test_cover_charges_only_what_was_not_reserved() -> None:
    """A body read past its reservation is charged as it grows, and refused once it no longer fits."""
    admission = Admission(max_requests=10, max_bytes=100)
    ticket = admission.admit(10)
    admission.cover(ticket, 5)  # within the reservation
    assert admission.bytes == 10
    admission.cover(ticket, 70)
    assert (ticket.bytes, admission.bytes) == (70, 70)
    other = admission.admit(20)
    with pytest.raises(ServiceUnavailable):
        admission.cover(ticket, 81)  # 70 + 20 + 11 > 100
    assert admission.bytes == 90
    admission.release(ticket)
    admission.release(other)
    assert (admission.requests, admission.bytes) == (0, 0)


def test_inflight_bytes_below_the_body_cap_is_a_config_error() -> None:
    """A bound that a largest body can never fit is refused at start-up, naming the variable."""
    with pytest.raises(ConfigError, match="TELEMETRY_MAX_INFLIGHT_BYTES"):
        ServerConfig.from_env(
            {"TELEMETRY_MAX_BODY_BYTES": "2048", "TELEMETRY_MAX_INFLIGHT_BYTES": "2047"}
        )
    with pytest.raises(ConfigError, match="TELEMETRY_MAX_INFLIGHT_REQUESTS"):
        ServerConfig.from_env({"TELEMETRY_MAX_INFLIGHT_REQUESTS": "0"})
    config = ServerConfig.from_env(
        {"TELEMETRY_MAX_INFLIGHT_REQUESTS": "7", "TELEMETRY_MAX_INFLIGHT_BYTES": "8388608"}
    )
    assert (config.max_inflight_requests, config.max_inflight_bytes) == (7, 8 * 1024 * KIB)


def test_defaults_fit_a_largest_body() -> None:
    """With default settings a body of the largest accepted size can be admitted."""
    config = ServerConfig()
    assert config.max_inflight_bytes >= config.max_body_bytes
    assert config.max_inflight_requests >= 1


# ---- the middleware, on the app served as the daemon serves it ------------------------------

Serve = Callable[..., Any]


@pytest.fixture
async def serve(make_config: Callable[..., ServerConfig]) -> AsyncIterator[Serve]:
    """Factory: the server app with the given settings, served on 127.0.0.1."""
    served: list[Served] = []

    async def start(**overrides: Any) -> Served:
        app = await Served(create_app(make_config(**overrides))).start()
        served.append(app)
        return app

    yield start
    for app in served:
        await app.stop()


async def hold(server: Served, body: bytes) -> Any:
    """A create whose head is sent and whose body is not: admitted, and held."""
    raw = await server.connect()
    before = server.admission.requests
    await raw.send_head("POST", "/api/v1/runs", json_head(len(body)))
    await until(lambda: server.admission.requests == before + 1, "the held request's admission")
    return raw


async def test_requests_beyond_the_inflight_bound_get_503_and_change_nothing(serve, new_run):
    """With one request held mid-body, a second is 503 JSON with Retry-After and stores nothing;
    once the first is answered, the second goes through."""
    server = await serve(max_inflight_requests=1)
    held_run = new_run()
    held_body = padded(held_run, 2 * KIB)
    held = await hold(server, held_body)
    await held.send(held_body[:100])

    run = new_run()
    assert_busy(*await server.call("POST", "/api/v1/runs", json_body=run))
    assert_busy(*await server.call("GET", f"/api/v1/runs/{run['event_id']}"))  # reads count too
    assert server.admission.refused == 2

    await held.send(held_body[100:])
    status, _, body = await held.response()
    assert status == 201, body
    await until(lambda: server.admission.requests == 0, "the held request's release")
    assert (await server.call("GET", f"/api/v1/runs/{run['event_id']}"))[0] == 404
    assert (await server.call("GET", f"/api/v1/runs/{held_run['event_id']}"))[0] == 200
    assert (await server.call("POST", "/api/v1/runs", json_body=run))[0] == 201
    assert (server.admission.requests, server.admission.bytes) == (0, 0)


async def test_a_body_that_does_not_fit_is_refused_before_it_is_sent(serve, new_run):
    """The 503 comes from the Content-Length alone: the client has sent no byte of its body;
    a body that fits beside the held one is admitted."""
    server = await serve(max_body_bytes=8 * KIB, max_inflight_bytes=10 * KIB)
    held_body = padded(new_run(), 6 * KIB)
    held = await hold(server, held_body)
    assert server.admission.bytes == 6 * KIB

    late = await server.connect()
    await late.send_head("POST", "/api/v1/runs", json_head(5 * KIB))  # 6 + 5 > 10, no body
    assert_busy(*await late.response())
    assert (server.admission.requests, server.admission.bytes) == (1, 6 * KIB)

    small = new_run()
    fits = await server.connect()
    small_body = padded(small, 4 * KIB)  # 6 + 4 <= 10
    await fits.send_head("POST", "/api/v1/runs", json_head(len(small_body)))
    await fits.send(small_body)
    status, _, body = await fits.response()
    assert (status, body["event_id"]) == (201, small["event_id"])

    await held.send(held_body)
    assert (await held.response())[0] == 201
    await until(lambda: server.admission.bytes == 0, "every reservation's release")


async def test_a_refused_body_sent_in_full_is_answered_not_reset(serve, new_run):
    """A client that writes its whole body before reading gets the 503, not a reset; the
    server closes that connection once it has read the rest, so no next request is sent on
    it; the retry on a new connection is stored."""
    server = await serve(max_body_bytes=8 * KIB, max_inflight_bytes=8 * KIB)
    held_body = padded(new_run(), 6 * KIB)
    held = await hold(server, held_body)

    run = new_run()
    body = padded(run, 4 * KIB)
    client = await server.connect()
    await client.send_head("POST", "/api/v1/runs", json_head(len(body)))
    await client.send(body)
    status, headers, answer = await client.response()
    assert_busy(status, headers, answer)
    assert headers.get("connection", "").lower() == "close", headers
    assert await asyncio.wait_for(client.reader.read(), 5) == b""  # closed after the answer
    await held.send(held_body)
    assert (await held.response())[0] == 201
    await until(lambda: server.admission.requests == 0, "the held request's release")

    retry = await server.connect()
    await retry.send_head("POST", "/api/v1/runs", json_head(len(body)))
    await retry.send(body)
    status, _, answer = await retry.response()
    assert (status, answer["event_id"]) == (201, run["event_id"])


async def test_chunked_bodies_are_charged_as_read_and_refused_once_over(serve, new_run):
    """A body without Content-Length reserves nothing up front, is charged as it arrives and
    is refused 503 once it no longer fits; nothing of it is stored; alone, it fits."""
    server = await serve(max_body_bytes=8 * KIB, max_inflight_bytes=10 * KIB)
    held_body = padded(new_run(), 6 * KIB)
    held = await hold(server, held_body)

    run = new_run()
    body = padded(run, 6 * KIB)  # 6 + 6 > 10 once read
    chunked = await server.connect()
    await chunked.send_head("POST", "/api/v1/runs", CHUNKED_HEAD)
    await chunked.send_chunked(body)
    assert_busy(*await chunked.response())
    assert (server.admission.requests, server.admission.bytes) == (1, 6 * KIB)
    assert (await server.call("GET", f"/api/v1/runs/{run['event_id']}"))[0] == 404

    await held.send(held_body)
    assert (await held.response())[0] == 201
    await until(lambda: server.admission.bytes == 0, "every reservation's release")
    again = await server.connect()  # the refused request's connection was closed
    await again.send_head("POST", "/api/v1/runs", CHUNKED_HEAD)
    await again.send_chunked(body)
    assert (await again.response())[0] == 201


async def test_a_compressed_body_is_charged_for_what_it_decodes_to(serve, new_run):
    """Content-Length counts gzip bytes; what the body decodes to is charged as it is read."""
    server = await serve(max_body_bytes=32 * KIB, max_inflight_bytes=40 * KIB)
    held_body = padded(new_run(), 20 * KIB)
    held = await hold(server, held_body)

    run = new_run()
    packed = gzip.compress(padded(run, 30 * KIB))
    assert len(packed) < 2 * KIB  # announced: < 2 KiB; decoded: 30 KiB, and 20 + 30 > 40
    bomb = await server.connect()
    await bomb.send_head(
        "POST", "/api/v1/runs", {**json_head(len(packed)), "Content-Encoding": "gzip"}
    )
    await bomb.send(packed)
    assert_busy(*await bomb.response())
    assert (await server.call("GET", f"/api/v1/runs/{run['event_id']}"))[0] == 404

    await held.send(held_body)
    assert (await held.response())[0] == 201
    await until(lambda: server.admission.bytes == 0, "every reservation's release")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_client_that_disconnects_mid_body_gives_everything_back(serve, new_run, framing):
    """Uploads aborted mid-body release their request and bytes, store nothing, and are
    logged as a 4xx (the client is gone), never as an unhandled error."""
    server = await serve(max_inflight_requests=4)
    runs = [new_run() for _ in range(6)]  # more aborted uploads than the bound
    with capture_logs() as logs:
        for run in runs:
            body = padded(run, 16 * KIB)
            raw = await server.connect()
            if framing == "chunked":
                await raw.send_head("POST", "/api/v1/runs", CHUNKED_HEAD)
                await raw.send_chunked(body[: 8 * KIB], piece=8 * KIB, end=False)
                await until(lambda: server.admission.bytes >= 8 * KIB, "the chunk's charge")
            else:
                await raw.send_head("POST", "/api/v1/runs", json_head(len(body)))
                await raw.send(body[: 8 * KIB])
                await until(lambda: server.admission.requests == 1, "the upload's admission")
            raw.abort()
            await until(
                lambda: (server.admission.requests, server.admission.bytes) == (0, 0),
                "the aborted upload's release",
            )
        await until(
            lambda: len([e for e in logs if e.get("event") == "http_request"]) == len(runs),
            "a log line per aborted upload",
        )
    statuses = [entry["status"] for entry in logs if entry.get("event") == "http_request"]
    assert all(400 <= status < 500 for status in statuses), statuses
    assert not [entry for entry in logs if entry.get("event") == "unhandled_error"]
    for run in runs:
        assert (await server.call("GET", f"/api/v1/runs/{run['event_id']}"))[0] == 404
    assert (await server.call("POST", "/api/v1/runs", json_body=new_run()))[0] == 201


async def test_health_and_metrics_are_never_refused_nor_counted(serve, new_run):
    """A saturated server still answers /health and /metrics, and they take no slot."""
    server = await serve(max_inflight_requests=1)
    held_body = padded(new_run(), 2 * KIB)
    held = await hold(server, held_body)
    for _ in range(3):
        assert (await server.call("GET", "/health"))[0] == 200
        assert (await server.call("GET", "/metrics"))[0] == 200
    assert server.admission.requests == 1
    assert_busy(*await server.call("GET", "/api/v1/runs"))
    await held.send(held_body)
    assert (await held.response())[0] == 201


async def test_errors_inside_handlers_release_their_slot(serve, new_run):
    """4xx answers (bad JSON, validation, 413, 404) give their request and bytes back."""
    server = await serve(max_inflight_requests=2, max_body_bytes=4 * KIB)
    assert (await server.call("POST", "/api/v1/runs", data=b"{not json"))[0] == 400
    assert (await server.call("POST", "/api/v1/runs", json_body={"event_id": "x"}))[0] == 422
    assert (await server.call("POST", "/api/v1/runs", data=b" " * (5 * KIB)))[0] == 413
    assert (await server.call("GET", "/api/v1/runs/nope"))[0] == 404
    await until(lambda: server.admission.requests == 0, "every release")
    assert (server.admission.bytes, server.admission.refused) == (0, 0)


async def test_openapi_documents_the_admission_503(serve):
    """Every operation admission may refuse documents 503; /health and /metrics do not."""
    server = await serve()
    status, _, spec = await server.call("GET", "/openapi.json")
    assert status == 200
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            refusable = path not in ("/health", "/metrics")
            assert ("503" in op["responses"]) == refusable or path == "/health", (path, method)


async def test_a_write_counts_until_the_writer_has_committed_it(serve, new_run, tmp_path):
    """The writer's queue holds only admitted bytes: while the database is locked by another
    process, the waiting write keeps its request and bytes; they are released once it is
    committed and answered."""
    server = await serve(busy_timeout_ms=10_000)
    run = new_run()
    body = padded(run, 3 * KIB)
    other = sqlite3.connect(tmp_path / "t.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would take it
        client = await server.connect()
        await client.send_head("POST", "/api/v1/runs", json_head(len(body)))
        await client.send(body)
        database = server.app[DATABASE]
        await until(lambda: database.writer.pending == 1, "the write to reach the writer")
        await asyncio.sleep(0.2)  # the writer thread is waiting on the lock
        assert (server.admission.requests, server.admission.bytes) == (1, len(body))
    finally:
        other.execute("COMMIT")
        other.close()
    status, _, answer = await client.response()
    assert (status, answer["event_id"]) == (201, run["event_id"])
    await until(lambda: server.admission.requests == 0, "the release after the answer")
    assert server.admission.bytes == 0
