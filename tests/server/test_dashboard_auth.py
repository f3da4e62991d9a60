"""The dashboard's login with TELEMETRY_API_AUTH_PROTECT_READS: no data without the
token, a session cookie that is HttpOnly and SameSite=Strict and is not the token, and
an API that still answers only to the bearer token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from dashboard_seed import FAILING_AGENT, build_fleet

from server.app import create_app
from server.config import ServerConfig
from server.ui.security import COOKIE, safe_next

TOKEN = "s3cret-token-for-the-dashboard"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def client_for(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_config: Callable[..., ServerConfig],
    **overrides: Any,
) -> TestClient[Any, Any]:
    config = make_config(auth_enabled=True, auth_token=TOKEN, reaper_interval_s=86_400, **overrides)
    client = await aiohttp_client(create_app(config))
    fleet = build_fleet()
    async with client.post("/api/v1/runs/batch", json=fleet.creates, headers=BEARER) as reply:
        assert reply.status == 200
    client.session.cookie_jar.clear()
    return client


@pytest.fixture
async def protected(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_config: Callable[..., ServerConfig],
) -> TestClient[Any, Any]:
    return await client_for(aiohttp_client, make_config, auth_protect_reads=True)


async def login(client: TestClient[Any, Any], token: str, next_path: str = "/ui/runs") -> Any:
    return await client.post(
        "/ui/login", data={"token": token, "next": next_path}, allow_redirects=False
    )


def session_cookie(response: Any) -> str:
    cookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie"):
        cookie.load(header)
    return cookie[COOKIE].value


@pytest.mark.parametrize(
    "path", ["/ui/", "/ui/runs", "/ui/agents", "/ui/jobs", "/ui/runs/e-0000", "/ui/agents/x"]
)
async def test_without_a_session_every_page_sends_to_the_login(
    protected: TestClient[Any, Any], path: str
) -> None:
    async with protected.get(path, allow_redirects=False) as response:
        body = await response.text()
        assert response.status == 303
        assert response.headers["Location"].startswith("/ui/login?next=")
        assert FAILING_AGENT not in body
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]


async def test_a_wrong_token_is_the_login_page_with_an_error(
    protected: TestClient[Any, Any],
) -> None:
    for token in ("wrong", "", "x" * 5000, "ünï\u200b"):
        async with await login(protected, token) as response:
            text = await response.text()
            assert response.status == 401, text[:500]
            assert "not the server&#39;s API token" in text or "not the server's" in text
            assert "Set-Cookie" not in response.headers
            assert FAILING_AGENT not in text


async def test_the_token_opens_a_strict_httponly_session_that_is_not_the_token(
    protected: TestClient[Any, Any],
) -> None:
    async with await login(protected, TOKEN, "/ui/agents") as response:
        assert response.status == 303
        assert response.headers["Location"] == "/ui/agents"
        header = response.headers["Set-Cookie"]
        assert "HttpOnly" in header
        assert "SameSite=Strict" in header
        assert "Path=/ui/" in header
        assert "Secure" not in header  # plain HTTP here; TLS adds it
        value = session_cookie(response)
    assert TOKEN not in value
    assert value
    cookies = {"Cookie": f"{COOKIE}={value}"}
    async with protected.get("/ui/", headers=cookies, allow_redirects=False) as response:
        assert response.status == 200
        assert FAILING_AGENT in await response.text()
    # The cookie never authorises the API: neither reads nor (CSRF) writes.
    async with protected.get("/api/v1/runs", headers=cookies) as response:
        assert response.status == 401
    async with protected.post("/api/v1/runs", json={}, headers=cookies) as response:
        assert response.status == 401
    # Nor is it a bearer token.
    async with protected.get("/api/v1/runs", headers={"Authorization": f"Bearer {value}"}) as r:
        assert r.status == 401
    async with protected.post("/ui/logout", headers=cookies, allow_redirects=False) as response:
        assert response.status == 303
        assert (
            f'{COOKIE}=""' in response.headers["Set-Cookie"]
            or "Max-Age=0" in (response.headers["Set-Cookie"])
        )


async def test_a_forged_cookie_is_refused(protected: TestClient[Any, Any]) -> None:
    for value in ("", "0" * 64, TOKEN, "é"):
        headers = {"Cookie": f"{COOKIE}={value}"}
        async with protected.get("/ui/", headers=headers, allow_redirects=False) as response:
            assert response.status == 303


async def test_login_page_and_stylesheet_need_no_session(protected: TestClient[Any, Any]) -> None:
    async with protected.get("/ui/login?next=%2Fui%2Fjobs") as response:
        text = await response.text()
        assert response.status == 200
        assert 'name="token"' in text
        assert 'type="password"' in text
        assert "/ui/jobs" in text
    async with protected.get("/ui/static/dashboard.css") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/runs?status=failure", "/ui/runs?status=failure"),
        ("//evil.example/ui/", "/ui/"),
        ("https://evil.example/ui/", "/ui/"),
        ("/api/v1/runs", "/ui/"),
        ("/ui/\\evil", "/ui/"),
        ("", "/ui/"),
    ],
)
def test_after_login_only_dashboard_paths(target: str, expected: str) -> None:
    assert safe_next(target) == expected


def test_tls_sessions_are_secure_cookies() -> None:
    """Served over TLS (the server's own certificate), the session cookie is Secure."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from server.ui.security import Session

    response = web.Response()
    Session(TOKEN, protect_reads=True, tls=True).sign_in(make_mocked_request("POST", "/"), response)
    header = response.cookies[COOKIE].OutputString()
    assert "Secure" in header
    assert "HttpOnly" in header
    assert "SameSite=Strict" in header


async def test_without_protected_reads_the_dashboard_is_open_and_writes_still_need_the_token(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_config: Callable[..., ServerConfig],
) -> None:
    client = await client_for(aiohttp_client, make_config)
    async with client.get("/ui/", allow_redirects=False) as response:
        assert response.status == 200
        text = await response.text()
        assert FAILING_AGENT in text
        assert "Sign out" not in text
    async with client.get("/ui/login", allow_redirects=False) as response:
        assert response.status == 303
    async with client.post("/api/v1/runs", json={}) as response:
        assert response.status == 401
