"""The OpenAPI operations of export and prune (kept apart from ``openapi``'s tables)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.http.export import PAGING, ExportOptions
from server.http.maintenance import PruneRequest
from server.storage.export import CSV_COLUMNS

if TYPE_CHECKING:
    from server.http.openapi import ApiVariant

_Schema = dict[str, Any]
OpBuilder = Callable[..., _Schema]

EXPORT_DESCRIPTION = f"""\
Every run the list's filters match (the same runs, in the same order, as walking
`GET /api/v1/runs` with `cursor`), streamed in chunks: memory stays constant whatever the
size. The whole export is one consistent snapshot, taken when the request arrives; runs
written meanwhile are not in it. A long export keeps the WAL from being checkpointed past
its snapshot (the WAL file grows until it ends).

* `ndjson` (`application/x-ndjson`): one run per line, the JSON object the list answers.
* `csv` (`text/csv; charset=utf-8`): RFC 4180, UTF-8 without BOM, CRLF line ends; a header
  row `{",".join(CSV_COLUMNS)}`; numbers bare, NULL an empty field, text always quoted
  (quotes doubled; an empty text is `""`); `metrics_json` and `context_json` are their JSON
  text. Text is exported exactly as stored; with `escape_formulas=true`, text starting with
  `=`, `+`, `-`, `@`, TAB or CR gets a leading `'` (CSV injection: spreadsheets then show
  it rather than evaluate it).

The path is never an event_id: a run whose event_id is `export` is in the export and the
list, and its PATCH and other sub-paths work. The paging parameters (`limit`, `offset`,
`cursor`) are refused with 422. An error while streaming (after the 200) cuts the body
short: a complete NDJSON export ends with a newline, a complete CSV with CRLF."""

PRUNE_DESCRIPTION = """\
Deletes finished runs (any status but `running`) whose `created_at` and
`COALESCE(end_time, created_at)` are both before now minus `older_than`, in small batches
through the server's writer between client writes (each holds it for about 20 ms), then
gives the freed pages back to the file system (incremental vacuum, when the database file
is in that mode; see `telemetry-server vacuum`). Answers when the pass is over, with what
it did; `dry_run` only counts. `telemetry-server prune` calls this. Without auth
(TELEMETRY_API_AUTH_ENABLED=false) only callers on the server's own host may prune (403
otherwise); with auth it needs the token, like every write."""


def export_op(variant: ApiVariant, op: OpBuilder, list_params: list[_Schema]) -> _Schema:
    params = [p for p in list_params if p["name"] not in PAGING]
    schema = ExportOptions.model_json_schema()
    for name, prop in schema["properties"].items():
        param_schema = {k: v for k, v in prop.items() if k not in ("title", "description")}
        params.insert(
            0 if name == "format" else 1,
            {
                "name": name,
                "in": "query",
                "description": prop["description"],
                "schema": param_schema,
            },
        )
    operation = op("exportRuns", "/api/v1/runs/export", variant, params=params)
    text = {"type": "string"}
    operation["responses"]["200"]["content"] = {
        "application/x-ndjson": {"schema": copy.deepcopy(text)},
        "text/csv": {"schema": copy.deepcopy(text)},
    }
    operation["description"] = EXPORT_DESCRIPTION
    return operation


def maintenance_paths(variant: ApiVariant, op: OpBuilder) -> dict[str, _Schema]:
    """The server's own maintenance endpoint (spoold does not relay it)."""
    if variant.proxied_reads:
        return {}
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
