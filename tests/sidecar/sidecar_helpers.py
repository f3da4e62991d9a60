"""Helpers for the sidecar tests: a checking HTTP wrapper, bounded waits, a scriptable upstream.

``FakeUpstream`` stands between spoold and the real central server. Each batch
request it receives is recorded (body, arrival time) and answered by the next
scripted behaviour, or by ``batch_default`` once the script is used up; every
other request by ``read_default``. The default for both is to proxy to the
real server, so a test scripts only the failures it is about.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

#: Columns that legitimately differ between two copies of the same run.
VOLATILE = frozenset({"created_at", "updated_at", "last_seen_at"})
FORBIDDEN_IN_ANY_BODY = ("Traceback", 'File "')


def make_run(**overrides: Any) -> dict[str, Any]:
    """A valid create body with a fresh event_id."""
    event_id = str(uuid.uuid4())
    run: dict[str, Any] = {
        "event_id": event_id,
        "run_id": f"run-{event_id[:8]}",
        "agent_name": "sidecar-agent",
        "job_type": "sidecar-job",
        "start_time": "2026-01-12T10:30:00Z",
    }
    run.update(overrides)
    return run


def stable(run: dict[str, Any]) -> dict[str, Any]:
    """A run without the columns that differ between two stores of it."""
    return {key: value for key, value in run.items() if key not in VOLATILE}


async def eventually(
    predicate: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, interval_s: float = 0.02
) -> bool:
    """Poll predicate until true; bounded both in time and in number of polls."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / interval_s) + 2):
        if await predicate():
            return True
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval_s)
    return False


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    what: str,
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
) -> None:
    """Poll predicate until true, or fail naming what was awaited."""
    if not await eventually(predicate, timeout_s=timeout_s, interval_s=interval_s):
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]


class Api:
    """An HTTP test client that decodes JSON and checks that nothing leaks a traceback."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        if json is not None:
            data = orjson.dumps(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
        async with self.client.request(
            method, path, data=data, params=params, headers=headers
        ) as response:
            raw = await response.read()
            text = raw.decode("utf-8", errors="replace")
            for marker in FORBIDDEN_IN_ANY_BODY:
                assert marker not in text, f"{method} {path} leaked {marker!r}: {text[:300]}"
            assert response.content_type == "application/json", (method, path, text[:200])
            body = orjson.loads(raw)
            if response.status >= 400:
                assert isinstance(body, dict), body
                assert "detail" in body, body
            return Reply(response.status, body, response.headers)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("POST", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("PATCH", path, **kwargs)

    async def create(self, run: dict[str, Any]) -> Reply:
        """POST a run and insist it was created."""
        reply = await self.post("/api/v1/runs", json=run)
        assert reply.status == 201, reply.body
        assert reply.body["status"] == "created", reply.body
        return reply

    async def run(self, event_id: str) -> dict[str, Any]:
        reply = await self.get(f"/api/v1/runs/{event_id}")
        assert reply.status == 200, reply.body
        return dict(reply.body)

    async def close(self) -> None:
        await self.client.close()


class Sidecar(Api):
    """spoold under test, with shortcuts to its /health."""

    async def health(self) -> dict[str, Any]:
        reply = await self.get("/health")
        assert reply.status in (200, 503), reply.body
        return dict(reply.body)

    async def depth(self) -> int:
        return int((await self.health())["spool"]["depth"])

    async def wait_drained(self, *, timeout_s: float = 10.0) -> dict[str, Any]:
        """Wait until nothing is queued, every accepted operation has left the queue and
        the spool has acked it (the ack follows the settle, in the background)."""

        async def drained() -> bool:
            health = await self.health()
            counters = health["counters"]
            return (
                counters["queued"] == 0
                and counters["accepted"] == counters["forwarded"] + counters["dead_lettered"]
                and health["spool"]["depth"] == 0
            )

        await wait_until(drained, "the spool to drain", timeout_s=timeout_s)
        return await self.health()


# ---- the scriptable upstream ---------------------------------------------------------

Behaviour = Callable[["FakeUpstream", web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    at: float
    answered: int | None = None


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Behaviour:
    """Answer with a fixed status and JSON body."""

    async def behave(fake: FakeUpstream, request: web.Request, raw: bytes) -> web.StreamResponse:
        payload = body if body is not None else {"detail": f"scripted {status}", "error": "test"}
        return web.json_response(payload, status=status, headers=headers)

    return behave


def hang(seconds: float) -> Behaviour:
    """Answer nothing for a while (longer than the client's timeout), then 503."""

    async def behave(fake: FakeUpstream, request: web.Request, raw: bytes) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({"detail": "too late"}, status=503)

    return behave


async def proxy(fake: FakeUpstream, request: web.Request, raw: bytes) -> web.StreamResponse:
    """Forward to the real server and relay its answer."""
    status, body, headers = await fake.forward(request.method, request.path_qs, raw)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def proxy_then(
    status: int, before_answer: Callable[[], Awaitable[None]] | None = None
) -> Behaviour:
    """Let the server commit the batch, then lose its answer (and optionally act meanwhile)."""

    async def behave(fake: FakeUpstream, request: web.Request, raw: bytes) -> web.StreamResponse:
        await fake.forward(request.method, request.path_qs, raw)
        if before_answer is not None:
            await before_answer()
        return web.json_response({"detail": "answer lost"}, status=status)

    return behave


def too_large_over(max_items: int) -> Behaviour:
    """413 (the server's own error JSON) for a batch with more than max_items items;
    proxy the others."""

    async def behave(fake: FakeUpstream, request: web.Request, raw: bytes) -> web.StreamResponse:
        if len(orjson.loads(raw)) > max_items:
            refusal = {"detail": "too large", "error": "payload_too_large"}
            return web.json_response(refusal, status=413)
        return await proxy(fake, request, raw)

    return behave


def refuse_runs(poison: Collection[str]) -> Behaviour:
    """Proxy the batch without the poison runs, and report those as per-item errors."""

    async def behave(fake: FakeUpstream, request: web.Request, raw: bytes) -> web.StreamResponse:
        items = orjson.loads(raw)
        kept = [(index, item) for index, item in enumerate(items) if item["event_id"] not in poison]
        refused = [
            {"index": index, "event_id": item["event_id"], "message": "refused by the test"}
            for index, item in enumerate(items)
            if item["event_id"] in poison
        ]
        result: dict[str, Any] = {
            "inserted": 0,
            "updated": 0,
            "duplicates": 0,
            "errors": [],
            "total": len(items),
        }
        if kept:
            path = f"{request.path}?{request.query_string}"
            status, body, _ = await fake.forward("POST", path, orjson.dumps([i for _, i in kept]))
            assert status == 200, body
            result = orjson.loads(body)
            for error in result["errors"]:
                error["index"] = kept[error["index"]][0]
            result["total"] = len(items)
        result["errors"] = sorted([*result["errors"], *refused], key=lambda e: e["index"])
        return web.json_response(result)

    return behave


@dataclass
class FakeUpstream:
    """An aiohttp app impersonating the central server; see the module docstring."""

    target: str | None = None
    url: str = ""
    batch_script: deque[Behaviour] = field(default_factory=deque)
    batch_default: Behaviour = proxy
    read_default: Behaviour = proxy
    batches: list[Received] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    def script(self, *behaviours: Behaviour) -> None:
        self.batch_script.extend(behaviours)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.cleanup_ctx.append(self._session_ctx)
        return app

    async def _session_ctx(self, app: web.Application) -> Any:
        self._session = aiohttp.ClientSession()
        yield
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        record = Received(
            request.method,
            request.path,
            dict(request.query),
            orjson.loads(raw) if raw else None,
            time.monotonic(),
        )
        self.requests.append(record)
        if request.method == "POST" and request.path == "/api/v1/runs/batch":
            self.batches.append(record)
            behaviour = self.batch_script.popleft() if self.batch_script else self.batch_default
        else:
            behaviour = self.read_default
        response = await behaviour(self, request, raw)
        record.answered = response.status
        return response

    async def forward(
        self, method: str, path_qs: str, raw: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        assert self.target is not None, "no real server behind"
        assert self._session is not None
        async with self._session.request(
            method,
            f"{self.target}{path_qs}",
            data=raw or None,
            headers={"Content-Type": "application/json"} if raw else None,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            body = await response.read()
            passed = {k: v for k, v in response.headers.items() if k == "Retry-After"}
            return response.status, body, passed

    def delivered_batches(self) -> list[list[dict[str, Any]]]:
        """Bodies of the batches the server really answered with 2xx."""
        return [b.body for b in self.batches if b.answered is not None and b.answered < 300]

    def items_sent(self, event_id: str) -> list[dict[str, Any]]:
        return [
            item
            for body in self.delivered_batches()
            for item in body
            if item["event_id"] == event_id
        ]


def event_ids(runs: Iterable[dict[str, Any]]) -> set[str]:
    return {run["event_id"] for run in runs}
