"""What spoold's OpenAPI document says differently from the server's.

spoold has no auth and no rate limit of its own, accepts only ``mode=insert``
batches, answers 202 ``queued`` for an update it keeps without the server's
confirmation, and proxies reads (503 / 504 when the server is unreachable or
slow; the server's own answers, 401 and 429 included, relayed).
"""

from __future__ import annotations

from typing import Any

from server.edge.openapi import ApiVariant
from spoold.http.reads import LOCAL_SOURCE_HEADER

_COUNT = {"type": "integer", "minimum": 0}
_COUNTERS = ("accepted", "forwarded", "queued", "dead_lettered")

SIDECAR_HEALTH: dict[str, Any] = {
    "type": "object",
    "description": "Liveness never depends on the upstream: read `status` and `reasons`.",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "unhealthy"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "version": {"type": "string"},
        "uptime_s": {"type": "number", "minimum": 0},
        "spool": {"type": "object", "properties": {"depth": _COUNT, "dead_letters": _COUNT}},
        "disk": {"type": "object"},
        "upstream": {"type": "object"},
        "counters": {
            "type": "object",
            "description": "accepted = forwarded + queued + dead_lettered.",
            "properties": {name: _COUNT for name in _COUNTERS},
        },
        "drain": {"type": "object"},
    },
    "required": ["status", "reasons", "version", "spool", "upstream", "counters"],
    "additionalProperties": True,
}

_SOURCE = {
    LOCAL_SOURCE_HEADER: {
        "description": "Present when spoold answered from its own state: `local-queue` (the "
        "run is still queued here), `local-index` (the server is unreachable), "
        "`server+local-queue` (the server's copy with updates still queued here applied).",
        "schema": {"type": "string", "enum": ["local-queue", "local-index", "server+local-queue"]},
    }
}

SIDECAR_API = ApiVariant(
    auth=False,
    rate_limit=False,
    upsert=False,
    health=SIDECAR_HEALTH,
    health_unhealthy_503=False,
    queues_unconfirmed=True,
    proxied_reads=True,
    run_source_header=_SOURCE,
    heartbeat=True,
    errors={
        "401": (
            "Unauthorized",
            "Reads only: the central server's 401 (it protects reads), relayed.",
        ),
        "404": ("NotFound", "No run has this event_id (here or on the server)."),
        "429": (
            "RateLimited",
            "Reads only: the central server's 429 (it rate-limits this host), relayed.",
        ),
        "503": (
            "ServiceUnavailable",
            "Busy: requests or body bytes in flight at their bound (any operation but "
            "/health and /metrics). Writes: the spool is full or the disk below its floor "
            "(back-pressure). Reads: the central server is unreachable, or what answers at "
            "SPOOLD_UPSTREAM_URL is not the telemetry server. Retry after `Retry-After` "
            "seconds.",
        ),
    },
)


HEARTBEAT_PATH = "/api/v1/runs/{event_id}/heartbeat"
_SPOOLD_HEARTBEAT = (
    " spoold spools it durably before answering 204 (for a run it knows) and sends only the "
    "newest of a run's queued heartbeats, with the time it accepted it (`seen_at`): a "
    "heartbeat held here during a server outage still counts from when the agent sent it."
)
_QUEUED_HEARTBEAT = {
    "type": "object",
    "properties": {
        "event_id": {"type": "string"},
        "queued": {"const": True},
        "message": {"type": "string"},
    },
    "required": ["event_id", "queued", "message"],
    "additionalProperties": False,
}


def with_heartbeat(document: dict[str, Any]) -> dict[str, Any]:
    """spoold's additions to the shared heartbeat operation: the 202 ``queued`` answer for
    a run it does not know while the server cannot be asked, and how it forwards beats."""
    op = document["paths"][HEARTBEAT_PATH]["post"]
    op["description"] += _SPOOLD_HEARTBEAT
    document["components"]["schemas"]["QueuedHeartbeatResponse"] = _QUEUED_HEARTBEAT
    op["responses"]["202"] = {
        "description": "The run is unknown here and the server could not be asked: the "
        "heartbeat is queued and will be applied when it is back.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/QueuedHeartbeatResponse"}}
        },
    }
    op["responses"] = dict(sorted(op["responses"].items()))
    return document
