"""What spoold's OpenAPI document says differently from the server's.

spoold has no auth and no rate limit of its own, accepts only ``mode=insert``
batches, answers 202 ``queued`` for an update it keeps without the server's
confirmation, and proxies reads (503 / 504 when the server is unreachable or
slow; the server's own answers, 401 and 429 included, relayed).
"""

from __future__ import annotations

from typing import Any

from server.contract.heartbeat import Heartbeat
from server.http.openapi import ApiVariant
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
_HEARTBEAT_TEXT = (
    "Says the run's agent is alive: refreshes the run's `last_seen_at` (so it is not "
    "reaped as stale) and changes nothing else, except that `progress`, if given, is "
    "merged into `metrics_json` as an RFC 7396 JSON merge patch. The body may be empty. "
    "A heartbeat for a finished run changes nothing (it never revives one). spoold "
    "spools it durably before answering and sends only the newest of a run's queued "
    "heartbeats, with the time it was accepted here."
)


def with_heartbeat(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with spoold's heartbeat endpoint (unless the shared builder has it)."""
    if HEARTBEAT_PATH in document["paths"]:
        return document
    schemas = document["components"]["schemas"]
    schemas.setdefault("Heartbeat", Heartbeat.model_json_schema(ref_template=_REF))
    refs = {
        code: {"$ref": f"#/components/responses/{name}"}
        for code, name in (
            ("400", "BadRequest"),
            ("404", "NotFound"),
            ("413", "PayloadTooLarge"),
            ("422", "ValidationError"),
            ("503", "ServiceUnavailable"),
        )
        if name in document["components"]["responses"]
    }
    queued = {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "queued": {"const": True},
            "message": {"type": "string"},
        },
        "required": ["event_id", "queued", "message"],
        "additionalProperties": False,
    }
    document["paths"][HEARTBEAT_PATH] = {
        "post": {
            "operationId": "heartbeatRun",
            "summary": "Say a run is alive",
            "description": _HEARTBEAT_TEXT,
            "tags": ["runs"],
            "parameters": [
                {
                    "name": "event_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            ],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model="Heartbeat")}}
                },
            },
            "responses": {
                "202": {
                    "description": "The run is unknown here and the server could not be asked: "
                    "the heartbeat is queued and will be applied when it is back.",
                    "content": {"application/json": {"schema": queued}},
                },
                "204": {"description": "Accepted (durable on local disk)."},
                **refs,
            },
        }
    }
    return document


_REF = "#/components/schemas/{model}"
