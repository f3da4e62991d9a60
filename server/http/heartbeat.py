"""``POST /api/v1/runs/{event_id}/heartbeat``: a long job says it is alive.

Refreshes the run's ``last_seen_at`` (so the reaper leaves it), and merges an optional
``progress`` object into ``metrics_json`` (RFC 7396). Nothing else changes. A run that
has already finished (the reaper's ``timeout`` included) is left as it is: a heartbeat
is a late "running", which never revives a run. 204 either way; 404 for an unknown run.
"""

from __future__ import annotations

from aiohttp import web

from server.contract.codec import loads
from server.contract.models import HeartbeatBody
from server.contract.validation import parse_model
from server.edge.admission import read_body
from server.edge.requests import MAX_JSON_DEPTH, event_id_of, not_found
from server.http.runs import DATABASE

routes = web.RouteTableDef()


@routes.post("/api/v1/runs/{event_id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    raw = await read_body(request)
    progress = None
    if raw.strip():  # empty (or only whitespace): a bare heartbeat
        body = parse_model(HeartbeatBody, loads(raw, max_depth=request.app[MAX_JSON_DEPTH]))
        progress = body.progress
    if await request.app[DATABASE].heartbeat(event_id, progress) == "not_found":
        raise not_found(event_id)
    return web.Response(status=204)
