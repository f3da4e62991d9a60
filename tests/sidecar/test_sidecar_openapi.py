"""spoold documents no status it cannot answer: each documented (operation, status)
pair of its /openapi.json is provoked for real, against the real server (or a
scripted upstream standing in for the server's own 401, 429 and slowness)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sidecar_helpers import FakeUpstream, Reply, Sidecar, answer, hang, make_run

from spoold.app import openapi_document

DOCUMENT = openapi_document()
MakeSidecar = Callable[..., Awaitable[Sidecar]]
SLOW_UPSTREAM_S = 1.0
LOOKUP_TIMEOUT_S = 0.3

_VALID_BODIES: dict[str, Any] = {
    "POST /api/v1/runs/batch": lambda run: [run],
    "PATCH /api/v1/runs/{event_id}": lambda run: {"status": "success"},
    "POST /api/v1/runs/{event_id}/associate-commit": lambda run: {
        "commit_hash": "abcdef1",
        "commit_source": "manual",
    },
    "POST /api/v1/runs/{event_id}/heartbeat": lambda run: {"progress": {"pct": 1}},
}
_INVALID_BODIES: dict[str, Any] = {
    "POST /api/v1/runs": {"event_id": "x"},
    "POST /api/v1/runs/batch": {"not": "an array"},
    "PATCH /api/v1/runs/{event_id}": {"no_such_field": 1},
    "POST /api/v1/runs/{event_id}/associate-commit": {"commit_source": "manual"},
    "POST /api/v1/runs/{event_id}/heartbeat": {"progress": 5},
}


def documented_statuses() -> list[tuple[str, str]]:
    return [
        (f"{method.upper()} {path}", status)
        for path, item in DOCUMENT["paths"].items()
        for method, op in item.items()
        for status in op["responses"]
    ]


@dataclass
class Upstreams:
    """Where spoold can point: the real server, a port nothing listens on, a scripted one."""

    central: Any  # conftest.Central: the real server
    dead_url: str
    fake: FakeUpstream
    make_sidecar: MakeSidecar

    async def sidecar_for(self, status: str, *, write: bool) -> Sidecar:
        """spoold set up so that ``status`` can happen: which upstream, which limits."""
        limits: dict[str, Any] = {}
        upstream = self.central.url
        if status == "202" or (status == "503" and not write):
            upstream = self.dead_url  # the server is down
        elif status == "503":
            limits["min_free_disk_mb"] = 10**9  # writes: the disk is "full"
        elif status in ("401", "429", "504"):
            self.fake.read_default = {
                "401": answer(401, {"detail": "Authorization required", "error": "unauthorized"}),
                "429": answer(429, {"detail": "slow down", "error": "rate_limited"}),
                "504": hang(SLOW_UPSTREAM_S),
            }[status]
            upstream = self.fake.url
            limits["lookup_timeout_s"] = LOOKUP_TIMEOUT_S
        elif status == "413":
            limits["max_body_bytes"] = 1024
        return await self.make_sidecar(upstream, **limits)


@pytest.mark.parametrize(("operation", "status"), documented_statuses())
async def test_each_documented_status_really_happens(
    central: Any,
    dead_url: str,
    fake: FakeUpstream,
    make_sidecar: MakeSidecar,
    operation: str,
    status: str,
) -> None:
    """Provoke ``status`` on ``operation`` for real and check it is what spoold answers."""
    method, template = operation.split(" ", 1)
    upstreams = Upstreams(central, dead_url, fake, make_sidecar)
    sidecar = await upstreams.sidecar_for(status, write=method != "GET")
    run = make_run()
    known = status in ("200", "201", "204") and "{event_id}" in template
    if known:
        await sidecar.create(run)
    event_id = run["event_id"] if known else f"unknown-{run['event_id']}"
    path = template.replace("{event_id}", event_id)
    body = (
        run
        if operation == "POST /api/v1/runs"
        else _VALID_BODIES.get(operation, lambda _: None)(run)
    )
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    if status == "400":
        kwargs = {"data": b'{"event_id": '}
    elif status == "413":
        kwargs = {"json": {**run, "error_details": "x" * 2048}}
    elif status == "422":
        kwargs = {"json": _INVALID_BODIES[operation]} if body is not None else {}
        if operation == "GET /api/v1/runs":
            kwargs = {"params": {"limit": "0"}}
        if operation == "GET /api/v1/stats":
            kwargs = {"params": {"group_by": "nope"}}
        if operation == "GET /api/v1/runs/export":
            kwargs = {"params": {"format": "xml"}}
    if operation == "GET /api/v1/runs/export" and status == "200":  # a stream, not JSON
        async with sidecar.client.get(path) as response:
            assert response.status == 200
            assert response.content_type == "application/x-ndjson"
        return
    if status == "204":  # no body: Api insists on JSON
        async with sidecar.client.request(method, path, **kwargs) as empty:
            assert (empty.status, await empty.read()) == (204, b""), operation
        return
    reply: Reply = await sidecar.request(method, path, **kwargs)
    assert reply.status == int(status), (operation, reply.body)
    if status == "202":
        assert reply.body.get("queued") is True or reply.body.get("status") == "queued"


async def test_documented_prometheus_answer_is_what_metrics_sends(
    make_sidecar: MakeSidecar,
) -> None:
    """/metrics documents a text/plain answer: spoold sends its own exposition as text/plain."""
    sidecar = await make_sidecar("http://127.0.0.1:9")  # its own metrics need no server
    content = DOCUMENT["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    async with sidecar.client.get("/metrics", headers={"Accept": "text/plain"}) as response:
        assert response.status == 200
        assert response.content_type in content
        assert "spoold" in await response.text()
