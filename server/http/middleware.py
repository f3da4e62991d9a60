"""The server's own middlewares: bearer auth, rate limiting, and its storage errors as 503.

The error boundary itself is shared (``server.edge.boundary``); the server
plugs ``storage_errors`` into it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from server.contract.errors import ApiError, RateLimited, ServiceUnavailable, retry_after
from server.http.auth import check_bearer
from server.http.ratelimit import Limiter
from server.storage.connection import StorageUnavailable
from server.ui.paths import is_ui_request

#: Paths that never need a token (/health and /metrics hide private fields instead).
OPEN_PATHS = frozenset({"/health", "/metrics", "/openapi.json", "/docs", "/redoc"})
#: Paths never rate limited: /health (a single-flight probe, so a flood costs one read
#: at a time, and a load balancer must never be told 429) and the static docs.
#: /metrics is limited like any read.
UNLIMITED_PATHS = OPEN_PATHS - {"/metrics"}

log = structlog.get_logger("server.storage")


#: The app's rate limiter, when one is on (for /metrics and tests).
RATE_LIMITER: web.AppKey[Limiter] = web.AppKey("rate_limiter")


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith("/docs/")


def is_unlimited_path(path: str) -> bool:
    return path in UNLIMITED_PATHS or path.startswith("/docs/")


class _StorageLog:
    """The ``storage_unavailable`` line, at most once a second per kind of failure: a
    failed group of hundreds of writes is one line, with how many it stands for."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, str | None], tuple[float, int]] = {}

    def __call__(self, exc: StorageUnavailable) -> None:
        cause = exc.__cause__
        kind = (str(exc), type(cause).__name__ if cause is not None else None)
        now = time.monotonic()
        logged_at, held = self._last.get(kind, (-math.inf, 0))
        if now - logged_at < self.interval_s:
            self._last[kind] = (logged_at, held + 1)
            return
        if len(self._last) > 64:  # kinds are few (fixed texts); never a leak
            self._last.clear()
        self._last[kind] = (now, 0)
        # The answer is fixed text; the operator's log says which failure it was (the
        # driver's class and error code, never its message: it may quote values).
        log.warning(
            "storage_unavailable",
            detail=kind[0],
            cause=kind[1],
            code=getattr(cause, "sqlstate", None) or getattr(cause, "sqlite_errorname", None),
            also_since_last=held,
        )


def storage_errors() -> Callable[[Exception], ApiError | None]:
    """The error boundary's translator for the server's storage (busy or full is a 503),
    with its own log throttle (one per app)."""
    log_unavailable = _StorageLog()

    def translate(exc: Exception) -> ApiError | None:
        if isinstance(exc, StorageUnavailable):
            log_unavailable(exc)
            return ServiceUnavailable(str(exc), headers=retry_after(exc.retry_after_s))
        return None

    return translate


def auth_middleware(token: str, *, protect_reads: bool) -> Middleware:
    """Require the bearer token on writes (and on reads when protect_reads)."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The dashboard asks for the token itself (a login page; see server.ui.security).
        if (
            not is_open_path(request.path)
            and not is_ui_request(request)
            and (protect_reads or request.method not in ("GET", "HEAD", "OPTIONS"))
        ):
            check_bearer(request.headers.get("Authorization"), token)
        return await handler(request)

    return authenticate


def rate_limit_middleware(limiter: Limiter) -> Middleware:
    """429 with Retry-After and X-RateLimit-* once a client spends its budget."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_unlimited_path(request.path):
            return await handler(request)
        decision = await limiter.decide(request.remote or "unknown")
        if not decision.allowed:
            raise RateLimited(
                f"Rate limit exceeded. Max {limiter.rpm} requests per minute.",
                headers=decision.headers(),
            )
        response = await handler(request)
        response.headers.update(decision.headers())
        return response

    return limit
