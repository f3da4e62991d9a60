"""The shared error boundary: a daemon's own exceptions become API errors only where it says so."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from server.contract.errors import ApiError, ServiceUnavailable, retry_after
from server.edge.boundary import error_boundary

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


class DiskFull(RuntimeError):
    """Stands for a daemon's own trouble (the server's StorageUnavailable)."""


def disk_full(exc: Exception) -> ApiError | None:
    if isinstance(exc, DiskFull):
        return ServiceUnavailable(f"disk full: {exc}", headers=retry_after(7))
    return None


def app_raising(exc: Exception, *, translators: tuple[Any, ...]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_boundary(translators)])
    app.router.add_get("/boom", handler)
    return app


async def test_a_translated_exception_is_its_api_error(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(app_raising(DiskFull("/var <full>"), translators=(disk_full,)))
    response = await client.get("/boom")
    assert response.status == 503
    assert response.headers["Retry-After"] == "7"
    assert (await response.json())["detail"] == "disk full: /var <full>"


async def test_without_its_translator_the_same_exception_is_a_500_without_its_text(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(app_raising(DiskFull("/var/secret"), translators=()))
    response = await client.get("/boom")
    assert response.status == 500
    body = await response.text()
    assert "secret" not in body
    assert (await response.json())["detail"] == "internal error; see the server log"


async def test_a_translator_declining_leaves_the_exception_unhandled(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(app_raising(KeyError("event_id"), translators=(disk_full,)))
    response = await client.get("/boom")
    assert response.status == 500
    assert response.content_type == "application/json"


async def test_an_unknown_route_is_the_json_404_whatever_the_translators(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(app_raising(DiskFull("x"), translators=(disk_full,)))
    response = await client.get("/nowhere\u2028")
    assert response.status == 404
    assert (await response.json())["error"]
