"""Shared fixtures: a server app on a temporary database, and a checking HTTP wrapper.

Every response that passes through ``Api`` is checked for the promises that hold
on every path: a JSON body, no traceback, and no SQL text in error bodies.
"""

from __future__ import annotations

import json as stdjson
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

# With no __init__.py files, pytest puts tests/ on sys.path for this conftest, and
# the directory tests/server would then shadow the real ``server`` package as an
# empty namespace package (the editable install's finder comes after the path
# scan). Putting the project root first makes ``import server`` find the package.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path[:1]:
    sys.path.insert(0, _ROOT)

import pg_cluster  # noqa: E402

import server.app  # noqa: E402
from server.app import create_app  # noqa: E402
from server.config import ServerConfig  # noqa: E402

FORBIDDEN_IN_ANY_BODY = ("Traceback", 'File "')
FORBIDDEN_IN_ERROR_BODY = ("SELECT", "INSERT", "agent_runs", "sqlite3")


@dataclass
class Reply:
    status: int
    body: Any
    text: str
    headers: CIMultiDictProxy[str]


class Api:
    """A thin wrapper over aiohttp's test client that checks every response."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        if json is not None:
            # stdlib json: it can write integers beyond 64 bits, which orjson refuses
            data = stdjson.dumps(json, ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        async with self.client.request(
            method, path, data=data, params=params, headers=headers
        ) as response:
            raw = await response.read()
            text = raw.decode("utf-8", errors="replace")
            for marker in FORBIDDEN_IN_ANY_BODY:
                assert marker not in text, f"{method} {path} leaked {marker!r}: {text[:500]}"
            if response.status >= 400:
                for marker in FORBIDDEN_IN_ERROR_BODY:
                    assert marker not in text, f"{method} {path} leaked {marker!r}: {text[:500]}"
            body: Any = None
            if method != "HEAD" and response.status != 204:  # 204: no content, no type
                assert response.content_type == "application/json", (method, path, text[:200])
                body = orjson.loads(raw)
                if response.status >= 400:
                    assert isinstance(body, dict), body
                    assert "detail" in body, body
            return Reply(response.status, body, text, response.headers)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("POST", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("PATCH", path, **kwargs)

    async def create(self, run: dict[str, Any], **kwargs: Any) -> Reply:
        """POST a run and insist that it was created."""
        reply = await self.post("/api/v1/runs", json=run, **kwargs)
        assert reply.status == 201, reply.body
        assert reply.body["status"] == "created", reply.body
        return reply

    async def run(self, event_id: str) -> dict[str, Any]:
        """GET one stored run, which must exist."""
        reply = await self.get(f"/api/v1/runs/{event_id}")
        assert reply.status == 200, reply.body
        return dict(reply.body)

    async def list(self, **params: Any) -> list[dict[str, Any]]:
        """GET /api/v1/runs with the given filters, which must be valid."""
        reply = await self.get("/api/v1/runs", params={k: str(v) for k, v in params.items()})
        assert reply.status == 200, reply.body
        return list(reply.body)


def make_run(**overrides: Any) -> dict[str, Any]:
    """A valid create body with a fresh event_id; overrides replace or add fields."""
    event_id = str(uuid.uuid4())
    run: dict[str, Any] = {
        "event_id": event_id,
        "run_id": f"run-{event_id[:8]}",
        "agent_name": "test-agent",
        "job_type": "test-job",
        "start_time": "2026-01-12T10:30:00Z",
    }
    run.update(overrides)
    return run


@pytest.fixture(scope="session", autouse=True)
def _build_openapi_once() -> Any:
    """create_app builds the (deterministic) OpenAPI document, which costs more than the
    rest of app creation; hundreds of handler tests each create an app, so build it once
    and hand every app its own copy, as the real builder does."""
    build = server.app.build_openapi
    cache: dict[tuple[tuple[str, Any], ...], bytes] = {}

    def build_once(**kwargs: Any) -> dict[str, Any]:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            cache[key] = orjson.dumps(build(**kwargs))
        return dict(orjson.loads(cache[key]))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server.app, "build_openapi", build_once, raising=False)
        yield


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[pg_cluster.Cluster]:
    """The session's throwaway PostgreSQL cluster (tests/pg_cluster.py), started by the
    first test that asks for it: tests/postgres, and the fuzzing of the server on it."""
    cluster = pg_cluster.Cluster.start(pg_cluster.require_postgres())
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def postgres_database(postgres_cluster: pg_cluster.Cluster) -> str:
    """The session's database; each test of tests/postgres works in a fresh schema of it."""
    return postgres_cluster.new_database("tests")


@pytest.fixture
def new_run() -> Callable[..., dict[str, Any]]:
    """Factory of valid create bodies (fresh event_id each call)."""
    return make_run


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., ServerConfig]:
    """Factory of server configs on a temporary database; fast sync mode unless overridden."""

    def make(**overrides: Any) -> ServerConfig:
        values: dict[str, Any] = {
            "db_path": tmp_path / "t.sqlite",
            "synchronous": "OFF",
            "reader_threads": 2,
        }
        values.update(overrides)
        return ServerConfig(**values)

    return make


@pytest.fixture
def make_api(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_config: Callable[..., ServerConfig],
) -> Callable[..., Awaitable[Api]]:
    """Factory: start the real app (database opened in its cleanup_ctx) and wrap a client."""

    async def make(**overrides: Any) -> Api:
        client = await aiohttp_client(create_app(make_config(**overrides)))
        return Api(client)

    return make


@pytest.fixture
async def api(make_api: Callable[..., Awaitable[Api]]) -> Api:
    """The server with its default configuration (auth and rate limiting off)."""
    return await make_api()
