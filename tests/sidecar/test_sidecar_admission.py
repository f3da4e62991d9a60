"""Admission control on spoold: requests and body bytes in flight are bounded; beyond either
bound a request is answered 503 with Retry-After before its body is read and nothing is
spooled; what a request holds is given back however it ends; admitted writes are delivered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from admission_helpers import CHUNKED_HEAD, KIB, Served, assert_busy, json_head, padded, until
from sidecar_helpers import make_run, wait_until
from structlog.testing import capture_logs

from server.contract.models import RunCreate
from spoold.app import create_app
from spoold.config import ConfigError, SpooldConfig
from spoold.spool.operations import create_op

Serve = Callable[..., Any]


@pytest.fixture
async def serve(spool_dir: Path) -> AsyncIterator[Serve]:
    """Factory: spoold with the given settings and upstream, served on 127.0.0.1."""
    served: list[Served] = []

    async def start(upstream_url: str, **overrides: Any) -> Served:
        values: dict[str, Any] = {
            "spool_dir": spool_dir,
            "upstream_url": upstream_url,
            "backoff_base_s": 0.01,
            "backoff_cap_s": 0.05,
            "min_free_disk_mb": 0,
            "shutdown_deadline_s": 0.2,
            "lookup_timeout_s": 1.0,
            "upstream_timeout_s": 3.0,
            "group_window_ms": 1.0,
            **overrides,
        }
        app = await Served(create_app(SpooldConfig(**values))).start()
        served.append(app)
        return app

    yield start
    for app in served:
        await app.stop()


async def counters(sidecar: Served) -> dict[str, int]:
    status, _, body = await sidecar.call("GET", "/health")
    assert status in (200, 503), body
    return dict(body["counters"])


async def hold(sidecar: Served, body: bytes) -> Any:
    raw = await sidecar.connect()
    before = sidecar.admission.requests
    await raw.send_head("POST", "/api/v1/runs", json_head(len(body)))
    await until(lambda: sidecar.admission.requests == before + 1, "the held request's admission")
    return raw


def test_inflight_settings_are_validated_once() -> None:
    """A bound that a largest body can never fit stops spoold at start-up, naming the variable."""
    with pytest.raises(ConfigError, match="SPOOLD_MAX_INFLIGHT_BYTES"):
        SpooldConfig.from_env(
            {"SPOOLD_MAX_BODY_BYTES": "4096", "SPOOLD_MAX_INFLIGHT_BYTES": "4095"}
        )
    with pytest.raises(ConfigError, match="SPOOLD_MAX_INFLIGHT_REQUESTS"):
        SpooldConfig.from_env({"SPOOLD_MAX_INFLIGHT_REQUESTS": "-1"})
    config = SpooldConfig.from_env(
        {"SPOOLD_MAX_INFLIGHT_REQUESTS": "3", "SPOOLD_MAX_INFLIGHT_BYTES": "6291456"}
    )
    assert (config.max_inflight_requests, config.max_inflight_bytes) == (3, 6 * 1024 * KIB)
    default = SpooldConfig()
    assert default.max_inflight_bytes >= default.max_body_bytes


async def test_beyond_the_bounds_writes_get_503_and_nothing_is_spooled(serve, dead_url):
    """Server down, one write held mid-body: the next (by count, or by bytes) is 503 with
    Retry-After, unread and not spooled; /health and /metrics still answer."""
    sidecar = await serve(
        dead_url, max_inflight_requests=2, max_body_bytes=8 * KIB, max_inflight_bytes=10 * KIB
    )
    held_body = padded(make_run(), 6 * KIB)
    held = await hold(sidecar, held_body)

    late = await sidecar.connect()
    await late.send_head("POST", "/api/v1/runs", json_head(5 * KIB))  # 6 + 5 > 10, no body sent
    assert_busy(*await late.response())
    chunked = await sidecar.connect()
    run = make_run()
    await chunked.send_head("POST", "/api/v1/runs", CHUNKED_HEAD)
    await chunked.send_chunked(padded(run, 6 * KIB))  # charged as read: 6 + 6 > 10
    assert_busy(*await chunked.response())

    second = await hold(sidecar, b"{}")  # now two requests in flight
    assert_busy(*await sidecar.call("POST", "/api/v1/runs", json_body=make_run()))
    assert_busy(*await sidecar.call("PATCH", f"/api/v1/runs/{run['event_id']}", json_body={}))
    status, _, health = await sidecar.call("GET", "/health")  # 503 here: upstream is down
    assert status in (200, 503)
    assert "status" in health, health  # the health answer, not the admission's refusal
    scrape = await sidecar.call("GET", "/metrics", headers={"Accept": "text/plain"})
    assert scrape[0] == 200, scrape
    assert sidecar.admission.refused == 4
    assert (await counters(sidecar))["accepted"] == 0

    await held.send(held_body)
    assert (await held.response())[0] == 201
    await second.send(b"{}")
    assert (await second.response())[0] == 422
    await until(lambda: sidecar.admission.requests == 0, "every release")
    assert sidecar.admission.bytes == 0
    assert (await counters(sidecar))["accepted"] == 1


async def test_uploads_aborted_mid_body_are_released_and_spool_nothing(serve, dead_url):
    """Clients that vanish mid-body give back their slot and bytes; no 500, nothing spooled."""
    sidecar = await serve(dead_url, max_inflight_requests=3)
    with capture_logs() as logs:
        for n in range(5):
            body = padded(make_run(), 32 * KIB)
            raw = await sidecar.connect()
            if n % 2:
                await raw.send_head("POST", "/api/v1/runs", CHUNKED_HEAD)
                await raw.send_chunked(body[: 4 * KIB], piece=4 * KIB, end=False)
                await until(lambda: sidecar.admission.bytes >= 4 * KIB, "the chunk's charge")
            else:
                await raw.send_head("POST", "/api/v1/runs", json_head(len(body)))
                await raw.send(body[: 4 * KIB])
                await until(lambda: sidecar.admission.requests == 1, "the upload's admission")
            raw.abort()
            await until(
                lambda: (sidecar.admission.requests, sidecar.admission.bytes) == (0, 0),
                "the aborted upload's release",
            )
        await until(
            lambda: len([e for e in logs if e.get("event") == "http_request"]) == 5,
            "a log line per aborted upload",
        )
    statuses = [entry["status"] for entry in logs if entry.get("event") == "http_request"]
    assert all(400 <= status < 500 for status in statuses), statuses
    assert not [entry for entry in logs if entry.get("event") == "unhandled_error"]
    assert (await counters(sidecar))["accepted"] == 0


async def test_writes_admitted_around_refusals_are_delivered(serve, central):
    """With the server up, what was admitted reaches it; what was refused does not."""
    sidecar = await serve(central.url, max_inflight_requests=1)
    held_run = make_run()
    held_body = padded(held_run, 4 * KIB)
    held = await hold(sidecar, held_body)
    refused = make_run()
    assert_busy(*await sidecar.call("POST", "/api/v1/runs", json_body=refused))
    await held.send(held_body)
    assert (await held.response())[0] == 201
    await until(lambda: sidecar.admission.requests == 0, "the held request's release")
    admitted = make_run()
    assert (await sidecar.call("POST", "/api/v1/runs", json_body=admitted))[0] == 201

    async def delivered() -> bool:
        found = await central.api.get(f"/api/v1/runs/{admitted['event_id']}")
        return found.status == 200

    await wait_until(delivered, "the admitted write to reach the server")
    assert (await central.api.get(f"/api/v1/runs/{held_run['event_id']}")).status == 200
    assert (await central.api.get(f"/api/v1/runs/{admitted['event_id']}")).status == 200
    assert (await central.api.get(f"/api/v1/runs/{refused['event_id']}")).status == 404


def test_a_create_operation_shares_its_free_form_json_with_the_model() -> None:
    """The spooled create holds the request's metrics_json/context_json objects, not copies
    (a copy doubled the memory of a large body), and its encoding is unchanged."""
    run = RunCreate.model_validate(
        make_run(metrics_json={"a": [[], {}, 1]}, context_json={}, error_details="e")
    )
    op = create_op(run, "2026-01-12T10:31:00Z")
    assert op["body"]["metrics_json"] is run.metrics_json
    assert op["body"]["context_json"] is run.context_json
    assert op["body"] == {
        **run.model_dump(exclude_none=True),
        "created_at": "2026-01-12T10:31:00Z",
    }
    bare = create_op(RunCreate.model_validate(make_run()), "2026-01-12T10:31:00Z")
    assert "metrics_json" not in bare["body"]
    assert "context_json" not in bare["body"]
