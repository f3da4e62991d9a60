"""``POST /api/v1/runs/{event_id}/heartbeat`` on spoold: "this run's agent is alive".

Validated as the server validates it (``HeartbeatBody``: an empty or blank body is a
bare heartbeat), checked against
the server's body cap and nesting limit as the batch item it becomes, and spooled
durably before the 204, like every write here (and counted like them: accepted,
queued, forwarded). A run this sidecar does not know is handled as a PATCH of it is:
the server is asked (its 404 is relayed), and while it cannot be asked the heartbeat
is spooled and answered 202 ``queued``. The drainer coalesces a run's heartbeats, so
only the newest travels (``spoold.forward.coalesce``).
"""

from __future__ import annotations

from aiohttp import web

from server.contract.codec import loads
from server.contract.models import HeartbeatBody
from server.contract.timestamps import utc_now
from server.contract.validation import parse_model
from server.edge.admission import read_body
from server.edge.requests import MAX_JSON_DEPTH, event_id_of
from server.edge.responses import json_response
from spoold.http.state import SIDECAR
from spoold.http.writes import _accept_update
from spoold.spool.operations import heartbeat_op

routes = web.RouteTableDef()


@routes.post("/api/v1/runs/{event_id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    raw = await read_body(request)
    beat = HeartbeatBody()
    if raw.strip():  # empty (or only whitespace): a bare heartbeat, as the server reads it
        beat = parse_model(HeartbeatBody, loads(raw, max_depth=request.app[MAX_JSON_DEPTH]))
    sidecar = request.app[SIDECAR]
    _, queued = await _accept_update(sidecar, event_id, heartbeat_op(event_id, beat, utc_now()))
    if queued:
        return json_response(
            {
                "event_id": event_id,
                "queued": True,
                "message": "server unreachable: heartbeat queued and will be applied when it "
                "is back",
            },
            202,
        )
    return web.Response(status=204)
