"""The server's own part of its OpenAPI document: its variant, its health, its prune.

The document is built by the shared builder (``server.edge.openapi``), which
both daemons use; what only the central server answers is plugged in here.
"""

from __future__ import annotations

from typing import Any

from server.edge.openapi import ApiVariant, build_document
from server.edge.openapi_export import OpBuilder
from server.http.maintenance import PruneRequest

_Schema = dict[str, Any]

_SERVER_HEALTH_TEXTS = ("version", "db_path", "journal_mode", "synchronous")
SERVER_HEALTH: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unhealthy"]},
        **{name: {"type": "string"} for name in _SERVER_HEALTH_TEXTS},
        "schema_version": {"type": "integer"},
        "pending_writes": {"type": "integer", "minimum": 0},
        "reason": {"type": "string", "description": "Why it is unhealthy."},
    },
    "required": ["status", "version", "schema_version"],
    "additionalProperties": True,
}
SERVER_API = ApiVariant(
    auth=True,
    rate_limit=True,
    upsert=True,
    health=SERVER_HEALTH,
    health_unhealthy_503=True,
    heartbeat=True,
)


PRUNE_DESCRIPTION = """\
Deletes finished runs (any status but `running`) whose `created_at` and
`COALESCE(end_time, created_at)` are both before now minus `older_than`, in small batches
through the server's writer between client writes (each holds it for about 20 ms), then
gives the freed pages back to the file system (incremental vacuum, when the database file
is in that mode; see `telemetry-server vacuum`). Answers when the pass is over, with what
it did; `dry_run` only counts. `telemetry-server prune` calls this. Without auth
(TELEMETRY_API_AUTH_ENABLED=false) only callers on the server's own host may prune (403
otherwise); with auth it needs the token, like every write."""


def build_openapi(*, title: str, version: str, description: str) -> dict[str, Any]:
    """The server's OpenAPI 3.1 document (its variant, with its maintenance endpoint)."""
    return build_document(
        title=title,
        version=version,
        description=description,
        variant=SERVER_API,
        own_paths=(maintenance_paths,),
    )


def maintenance_paths(variant: ApiVariant, op: OpBuilder) -> dict[str, _Schema]:
    """The server's own maintenance endpoint (spoold does not relay it)."""
    body = PruneRequest.model_json_schema()
    body.pop("title", None)
    count = {"type": "integer", "minimum": 0}
    answer: _Schema = {
        "type": "object",
        "properties": {
            "cut": {"type": "string", "description": "Runs before this instant were old."},
            "statuses": {"type": "array", "items": {"type": "string"}},
            "dry_run": {"type": "boolean"},
            "deleted": {**count, "description": "Runs deleted (dry run: would be)."},
            "by_status": {"type": "object", "additionalProperties": count},
            "batches": count,
            "max_batch_ms": {
                "type": "number",
                "description": "Longest batch's statements (its COMMIT not included).",
            },
            "max_batch_cpu_ms": {
                "type": "number",
                "description": "The writer thread's CPU time in that batch.",
            },
            "max_batch_rows": count,
            "vacuumed_pages": count,
            "max_vacuum_step_ms": {"type": "number"},
            "seconds": {"type": "number"},
            "oldest_created_at": {"type": ["string", "null"]},
            "newest_created_at": {"type": ["string", "null"]},
            "incremental_vacuum": {
                "type": "boolean",
                "description": "False: the file keeps its size (pages are reused).",
            },
        },
        "required": ["cut", "deleted", "by_status", "dry_run"],
        "additionalProperties": True,
    }
    operation = op("pruneRuns", "/api/v1/maintenance/prune", variant, body)
    operation["responses"]["200"]["content"]["application/json"]["schema"] = answer
    operation["description"] = PRUNE_DESCRIPTION
    return {"/api/v1/maintenance/prune": {"post": operation}}
