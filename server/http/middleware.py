"""Middlewares: the error boundary and request log, bearer auth, rate limiting.

The error boundary is the one place where every failure — ours, pydantic's,
aiohttp's 404/405/413, storage trouble, anything unexpected — becomes one
JSON shape. No traceback ever leaves the process in a response.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from server.contract.codec import dumps
from server.contract.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    retry_after,
)
from server.http.auth import check_bearer
from server.http.ratelimit import RateLimiter
from server.storage.connection import StorageUnavailable
from server.ui.paths import is_ui_request

log = structlog.get_logger("server.http")

#: Called once per request with (route, method, status, seconds), e.g. for Prometheus.
RequestObserver = Callable[[str, str, int, float], None]
REQUEST_OBSERVER: web.AppKey[RequestObserver] = web.AppKey("request_observer", object)  # type: ignore[arg-type]

#: Paths that never need a token (/health and /metrics hide private fields instead).
OPEN_PATHS = frozenset({"/health", "/metrics", "/openapi.json", "/docs", "/redoc"})
#: Paths never rate limited: /health (a single-flight probe, so a flood costs one read
#: at a time, and a load balancer must never be told 429) and the static docs.
#: /metrics is limited like any read.
UNLIMITED_PATHS = OPEN_PATHS - {"/metrics"}


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith("/docs/")


def is_unlimited_path(path: str) -> bool:
    return path in UNLIMITED_PATHS or path.startswith("/docs/")


def error_response(error: ApiError) -> web.Response:
    response = web.Response(
        body=dumps(error.body()), status=error.status, content_type="application/json"
    )
    response.headers.update(error.headers)
    return response


def _translate_http(exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return NotFound("Not Found: no such route")
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        error: ApiError = MethodNotAllowed(
            "Method Not Allowed", headers={"Allow": allowed} if allowed else None
        )
        return error
    if exc.status == 413:
        return PayloadTooLarge("request body too large")
    if exc.status < 500:
        error = BadRequest(exc.reason or "bad request")
        error.status = exc.status
        return error
    return ServiceUnavailable("service unavailable", headers=retry_after(1))


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def error_boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; log one line per request."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc)
    except StorageUnavailable as exc:
        response = error_response(
            ServiceUnavailable(str(exc), headers=retry_after(exc.retry_after_s))
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(_translate_http(exc))
    except Exception:
        log.exception("unhandled_error", method=request.method, route=_route_of(request))
        response = error_response(ApiError("internal error; see the server log"))
    seconds = time.perf_counter() - started
    route = _route_of(request)
    log.info(
        "http_request",
        method=request.method,
        route=route,
        status=response.status,
        duration_ms=round(seconds * 1000, 3),
        remote=request.remote,
    )
    observer = request.app.get(REQUEST_OBSERVER)
    if observer is not None:
        observer(route, request.method, response.status, seconds)
    return response


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


def rate_limit_middleware(limiter: RateLimiter) -> Middleware:
    """429 with Retry-After and X-RateLimit-* once a client spends its budget."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_unlimited_path(request.path):
            return await handler(request)
        decision = limiter.check(request.remote or "unknown")
        if not decision.allowed:
            raise RateLimited(
                f"Rate limit exceeded. Max {limiter.rpm} requests per minute.",
                headers=decision.headers(),
            )
        response = await handler(request)
        response.headers.update(decision.headers())
        return response

    return limit
