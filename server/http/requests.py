"""Reading request bodies and path parameters safely."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.contract.codec import loads
from server.contract.errors import NotFound
from server.contract.fields import IDENTIFIER_MAX_LEN
from server.http.admission import read_body

MAX_JSON_DEPTH: web.AppKey[int] = web.AppKey("max_json_depth", int)


async def read_json(request: web.Request) -> Any:
    """The parsed body. Any content type is read as JSON (curl without -H still works);
    oversize bodies raise aiohttp's 413, which the error boundary answers as JSON.
    The bytes are read under admission control (``server.http.admission``)."""
    raw = await read_body(request)
    return loads(raw, max_depth=request.app[MAX_JSON_DEPTH])


def event_id_of(request: web.Request) -> str:
    """The path's event_id; an impossible one is simply not found."""
    event_id = request.match_info["event_id"]
    if not event_id or len(event_id) > IDENTIFIER_MAX_LEN or not event_id.isprintable():
        raise NotFound("Run not found")
    return event_id


def not_found(event_id: str) -> NotFound:
    return NotFound(f"Run not found: {event_id}")
