"""The error hierarchy shared by both daemons.

Every failure a client can see is one of these classes; each carries its HTTP
status and a stable ``error`` code. The body shape is FastAPI-compatible
(``{"detail": ...}``) so clients written against the reference keep parsing it,
with an ``error`` code added for machines.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base class: an error with an HTTP status and a JSON body."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        detail: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = detail if detail is not None else self.default_detail()
        self.headers = headers or {}
        super().__init__(str(self.detail))

    def default_detail(self) -> str:
        return self.code.replace("_", " ")

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "error": self.code}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class MalformedJson(BadRequest):
    code = "malformed_json"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, detail: Any = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class ValidationFailed(ApiError):
    """422 with a list of ``{loc, msg, type}`` entries, as FastAPI answers."""

    status = 422
    code = "validation_error"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"


class ServiceUnavailable(ApiError):
    status = 503
    code = "service_unavailable"


class UpstreamTimeout(ApiError):
    status = 504
    code = "upstream_timeout"


def retry_after(seconds: float) -> dict[str, str]:
    """A ``Retry-After`` header in whole seconds, at least one."""
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}
