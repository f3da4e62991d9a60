"""The dashboard's security: response headers (a strict CSP) and the login session.

With ``TELEMETRY_API_AUTH_PROTECT_READS`` on, the dashboard asks for the API token once
(a POST form) and keeps, in an HttpOnly, SameSite=Strict cookie, a value *derived* from
the token (an HMAC, keyed by the token, of a fixed label and the cookie's issue time):
the cookie proves the token was given, yet is not the token, so it cannot be replayed as
a bearer token, and it never authorises the API (which reads only ``Authorization``: no
cross-site request can write through it). Changing the token ends every session; so does
``TELEMETRY_UI_SESSION_HOURS`` after the sign-in (a copied cookie stops working, and the
issue time cannot be moved without breaking the HMAC). Signing out deletes the browser's
copy only: the server keeps no session state.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from aiohttp import web

#: Every dashboard response carries these (pages, static files, error pages).
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
#: Pages hold run data: never kept by a shared cache (or the browser's back-forward
#: cache beyond the session).
PAGE_CACHE = "no-store"
STATIC_CACHE = "public, max-age=300"

COOKIE = "lt_ui_session"
_VERSION = "v1"
_LABEL = b"local-telemetry dashboard session v1|"
DEFAULT_LIFETIME_S = 12 * 3600.0


def session_value(token: str, issued: int) -> str:
    """The cookie's value for a token and an issue time: ``v1.<issued>.<hex HMAC>``."""
    mac = hmac.new(
        token.encode("utf-8", "surrogateescape"), _LABEL + str(issued).encode(), hashlib.sha256
    ).hexdigest()
    return f"{_VERSION}.{issued}.{mac}"


class Session:
    """Whether a request may see the dashboard's data, and the cookie that says so."""

    def __init__(
        self,
        token: str | None,
        *,
        protect_reads: bool,
        tls: bool,
        lifetime_s: float = DEFAULT_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.required = bool(protect_reads and token)
        self._token = token or ""
        self.tls = tls
        self.lifetime_s = lifetime_s
        self._clock = clock

    def token_matches(self, presented: str) -> bool:
        return hmac.compare_digest(
            presented.encode("utf-8", "surrogateescape"),
            self._token.encode("utf-8", "surrogateescape"),
        )

    def allows(self, request: web.Request) -> bool:
        if not self.required:
            return True
        version, _, rest = request.cookies.get(COOKIE, "").partition(".")
        issued_text, _, _ = rest.partition(".")
        if version != _VERSION or not issued_text.isdigit() or len(issued_text) > 12:
            return False
        issued = int(issued_text)
        age = self._clock() - issued
        if not 0 <= age < self.lifetime_s:  # expired, or issued "in the future"
            return False
        expected = session_value(self._token, issued)
        presented = request.cookies[COOKIE]
        return hmac.compare_digest(presented.encode("ascii", "replace"), expected.encode())

    def sign_in(self, request: web.Request, response: web.StreamResponse) -> None:
        response.set_cookie(
            COOKIE,
            session_value(self._token, int(self._clock())),
            path="/ui/",
            max_age=int(self.lifetime_s),
            httponly=True,
            samesite="Strict",
            secure=self.tls or request.secure,
        )

    def sign_out(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/ui/")


SESSION: web.AppKey[Session] = web.AppKey("ui_session", Session)


def safe_next(target: str | None) -> str:
    """Where to go after the login: a dashboard path of this server, else the overview
    (never another host: ``//evil.example`` and ``https://...`` are refused)."""
    if not target:
        return "/ui/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/"):
        return "/ui/"
    if "\\" in target or any(ord(ch) < 0x20 for ch in target):
        return "/ui/"
    # A browser resolves dot segments, even percent-encoded: /ui/../x is the server's /x.
    if any(unquote(part) in (".", "..") for part in parts.path.split("/")):
        return "/ui/"
    return target
