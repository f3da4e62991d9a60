"""A dashboard session ends on its own: the cookie carries its issue time under the HMAC,
so a copied cookie stops working after TELEMETRY_UI_SESSION_HOURS, and moving its time
forward breaks the signature."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from multidict import CIMultiDict

from server.config import ConfigError, ServerConfig
from server.ui.security import COOKIE, Session

TOKEN = "s3cret-token-for-the-dashboard"
HOUR = 3600.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def issued_cookie(session: Session) -> tuple[str, SimpleCookie]:
    request = make_mocked_request("POST", "/ui/login")
    response = web.Response()
    session.sign_in(request, response)
    jar: SimpleCookie = SimpleCookie()
    jar.load(response.cookies[COOKIE].OutputString())
    return jar[COOKIE].value, jar


def presenting(value: str) -> web.Request:
    return make_mocked_request("GET", "/ui/", headers=CIMultiDict({"Cookie": f"{COOKIE}={value}"}))


def test_a_session_ends_after_its_lifetime() -> None:
    clock = Clock(1_800_000_000.0)
    session = Session(TOKEN, protect_reads=True, tls=False, lifetime_s=12 * HOUR, clock=clock)
    value, jar = issued_cookie(session)
    assert jar[COOKIE]["max-age"] == str(12 * 3600)  # the browser forgets it too
    assert session.allows(presenting(value))
    clock.now += 12 * HOUR - 1
    assert session.allows(presenting(value))
    clock.now += 2
    assert not session.allows(presenting(value))


def test_a_cookie_whose_time_was_moved_forward_is_refused() -> None:
    clock = Clock(1_800_000_000.0)
    session = Session(TOKEN, protect_reads=True, tls=False, lifetime_s=HOUR, clock=clock)
    value, _ = issued_cookie(session)
    version, issued, mac = value.split(".")
    forged = f"{version}.{int(issued) + 10 * 3600}.{mac}"
    clock.now += 2 * HOUR
    assert not session.allows(presenting(forged))
    assert not session.allows(presenting(value))


@pytest.mark.parametrize(
    "value",
    ["", "v1", "v1..", "v1.abc.def", "v1.-5.00", "v2.1800000000.00", "v1.1e9." + "0" * 64, "é"],
)
def test_malformed_cookies_are_refused(value: str) -> None:
    session = Session(TOKEN, protect_reads=True, tls=False, clock=Clock(1_800_000_000.0))
    assert not session.allows(presenting(value))


def test_a_cookie_from_the_future_is_refused() -> None:
    clock = Clock(1_800_000_000.0)
    session = Session(TOKEN, protect_reads=True, tls=False, clock=clock)
    value, _ = issued_cookie(session)
    clock.now -= 3600  # issued an hour "ahead" of now: a clock stepped back, or a forgery
    assert not session.allows(presenting(value))


def test_another_tokens_cookie_is_refused() -> None:
    clock = Clock(1_800_000_000.0)
    old = Session("old-token", protect_reads=True, tls=False, clock=clock)
    value, _ = issued_cookie(old)
    new = Session(TOKEN, protect_reads=True, tls=False, clock=clock)
    assert not new.allows(presenting(value))


@pytest.mark.parametrize("hours", ["0", "-1", "100000", "soon"])
def test_the_session_lifetime_is_validated(hours: str) -> None:
    env = {
        "TELEMETRY_API_AUTH_ENABLED": "true",
        "TELEMETRY_API_AUTH_TOKEN": TOKEN,
        "TELEMETRY_UI_SESSION_HOURS": hours,
    }
    with pytest.raises(ConfigError):
        ServerConfig.from_env(env)


async def test_the_login_sets_the_configured_lifetime(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_config: Callable[..., ServerConfig],
) -> None:
    from server.app import create_app

    config = make_config(
        auth_enabled=True, auth_token=TOKEN, auth_protect_reads=True, ui_session_hours=2
    )
    client = await aiohttp_client(create_app(config))
    reply = await client.post(
        "/ui/login", data={"token": TOKEN, "next": "/ui/"}, allow_redirects=False
    )
    assert reply.status == 303
    jar: SimpleCookie = SimpleCookie()
    for header in reply.headers.getall("Set-Cookie"):
        jar.load(header)
    assert jar[COOKIE]["max-age"] == str(2 * 3600)
    page = await client.get("/ui/", allow_redirects=False)
    assert page.status == 200
