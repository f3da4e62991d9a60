"""Bearer-token checks, compared in constant time. Tokens are never logged."""

from __future__ import annotations

import hmac

from aiohttp import web

from server.contract.errors import Unauthorized


def check_bearer(header: str | None, expected: str) -> None:
    """Raise Unauthorized unless header is ``Bearer <expected>``."""
    if not header:
        raise Unauthorized("Authorization header required. Use: Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Invalid authorization format. Use: Authorization: Bearer <token>")
    try:
        presented = token.strip().encode("utf-8", "surrogateescape")
    except UnicodeError:
        presented = b""  # undecodable bytes can never equal the configured token
    if not hmac.compare_digest(presented, expected.encode()):
        raise Unauthorized("Invalid authentication token")


class ReadGuard:
    """Decides whether a caller of an open endpoint (/health, /metrics) may see private
    fields: agent names, file paths. With TELEMETRY_API_AUTH_PROTECT_READS on, only a
    caller presenting the token does; a missing or wrong token gets the public view
    (never 401, so load balancers and scrapers without a token keep working)."""

    def __init__(self, token: str | None, *, protect_reads: bool) -> None:
        self._token = token
        self.protecting = protect_reads and bool(token)

    def reveals(self, header: str | None) -> bool:
        if not self.protecting or self._token is None:
            return True
        try:
            check_bearer(header, self._token)
        except Unauthorized:
            return False
        return True


READ_GUARD: web.AppKey[ReadGuard] = web.AppKey("read_guard", ReadGuard)
