"""The error boundary and request log both daemons put outermost.

It is the one place where every failure — ours, pydantic's, aiohttp's
404/405/413, a daemon's own trouble, anything unexpected — becomes one JSON
shape. No traceback ever leaves the process in a response. A daemon maps its
own exceptions (the server's storage errors) with a translator it plugs in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from server.contract.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    retry_after,
)
from server.edge.responses import error_response

# The logger keeps the name it had before the edge was shared: log queries still match.
log = structlog.get_logger("server.http")

#: Called once per request with (route, method, status, seconds), e.g. for Prometheus.
RequestObserver = Callable[[str, str, int, float], None]
REQUEST_OBSERVER: web.AppKey[RequestObserver] = web.AppKey("request_observer", object)  # type: ignore[arg-type]

#: A daemon's own exception as an API error, or None when it is not one of its own.
ErrorTranslator = Callable[[Exception], ApiError | None]


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


def _translated(exc: Exception, translators: Sequence[ErrorTranslator]) -> ApiError | None:
    for translate in translators:
        error = translate(exc)
        if error is not None:
            return error
    return None


def error_boundary(translators: Sequence[ErrorTranslator] = ()) -> Middleware:
    """Turn every failure into the JSON error shape; log one line per request."""
    translators = tuple(translators)

    @web.middleware
    async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(_translate_http(exc))
        except Exception as exc:
            error = _translated(exc, translators)
            if error is None:
                log.exception("unhandled_error", method=request.method, route=_route_of(request))
                error = ApiError("internal error; see the server log")
            response = error_response(error)
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

    return boundary
