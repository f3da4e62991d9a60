"""JSON answers and JSON errors, encoded the one way both daemons answer (the contract's codec)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.contract.codec import dumps
from server.contract.errors import ApiError


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json")


def error_response(error: ApiError) -> web.Response:
    """The one JSON error shape, with the error's own headers (Retry-After, Allow, ...)."""
    response = web.Response(
        body=dumps(error.body()), status=error.status, content_type="application/json"
    )
    response.headers.update(error.headers)
    return response
