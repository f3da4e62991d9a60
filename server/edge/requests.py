"""Reading request bodies and path parameters safely."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.contract.codec import loads
from server.contract.errors import NotFound
from server.contract.fields import JSON_DEPTH_BUDGET, identifier_problem
from server.contract.updates import patch_changes
from server.edge.admission import read_body

MAX_JSON_DEPTH: web.AppKey[int] = web.AppKey("max_json_depth", int)


async def read_json(request: web.Request) -> Any:
    """The parsed body. Any content type is read as JSON (curl without -H still works);
    oversize bodies raise aiohttp's 413, which the error boundary answers as JSON.
    The bytes are read under admission control (``server.edge.admission``)."""
    raw = await read_body(request)
    return loads(raw, max_depth=request.app[MAX_JSON_DEPTH])


def json_fields_context(request: web.Request, *, level: int = 1) -> dict[str, Any]:
    """Validation context for a model found at nesting ``level`` of the body (1: the body
    itself; 2: a batch item): JSON text in its JSON fields may hold what inline JSON there
    could, the body's depth limit minus that level."""
    return {JSON_DEPTH_BUDGET: request.app[MAX_JSON_DEPTH] - level}


def event_id_of(request: web.Request) -> str:
    """The path's event_id; an impossible one (by the same rule as bodies) is not found."""
    event_id = request.match_info["event_id"]
    if identifier_problem(event_id) is not None:
        raise NotFound("Run not found")
    return event_id


async def read_patch(request: web.Request) -> tuple[str, dict[str, Any]]:
    """A PATCH of a run: its event_id and the fields to set (echoed server fields dropped,
    so they are never stored nor spooled), as both daemons read it."""
    event_id = event_id_of(request)
    body = await read_json(request)
    return event_id, patch_changes(body, event_id, context=json_fields_context(request))


def not_found(event_id: str) -> NotFound:
    return NotFound(f"Run not found: {event_id}")
