"""Bearer-token checks, compared in constant time. Tokens are never logged."""

from __future__ import annotations

import hmac

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
