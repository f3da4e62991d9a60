"""The OpenAPI 3.1 documents of both daemons, generated from the shared contract models.

Constraints that live in validators rather than in types (statuses, instants,
commit hashes) are added by recognising those field types, so they cannot drift.
Where the daemons differ (auth, rate limiting, ``mode=upsert``, spoold's queued
202 answers and proxied reads), an ``ApiVariant`` says what the daemon really
does, so each document lists only the statuses and answers its daemon produces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from server.contract import fields, models
from server.contract import stats as stats_models
from server.edge.openapi_export import OpBuilder, export_op

_Schema = dict[str, Any]
_SCHEMA_REF = "#/components/schemas/{model}"


def _ref(name: str) -> _Schema:
    return {"$ref": _SCHEMA_REF.format(model=name)}


_REQUESTS = (
    *(models.RunCreate, models.RunUpdate, models.CommitAssociation, models.UpsertItem),
    models.HeartbeatBody,
)
_ANSWERS = (
    *(models.CreateResponse, models.DuplicateResponse, models.UpdateResponse),
    *(models.AssociateResponse, models.BatchResponse, models.UpsertResponse),
    *(models.RunRecord, models.ErrorBody, stats_models.StatsAnswer),
)
_INSTANT = {
    "format": "date-time",
    "description": "ISO 8601 instant with a timezone (e.g. 2026-01-12T10:30:00Z); "
    "values without a timezone are refused.",
}
# Any VCS revision: one token without whitespace or controls (hex is stored lower case).
_REVISION = r"^[^\s\x00-\x1f\x7f-\x9f]+$"
_COMMIT_HASH = {"pattern": _REVISION, "minLength": 7, "maxLength": 40}
_GIT_COMMIT_HASH = {"pattern": _REVISION, "minLength": 1, "maxLength": 255}
_IDENTIFIER = {
    "pattern": "^[^/\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]+$",
    "description": "Any text (emoji, no-break spaces, combining marks, bidi text) except "
    "blank, '/', C0/C1 control characters, DEL and U+2028/U+2029; at most 255 characters.",
}
_ANY_STATUS = {
    "enum": [*fields.CANONICAL_STATUSES, *fields.STATUS_ALIASES],
    "description": "Canonical status, or an alias (failed, completed, succeeded) "
    "that is normalised to its canonical value.",
}
_CANONICAL_STATUS = {
    "enum": list(fields.CANONICAL_STATUSES),
    "description": "Canonical status only.",
}
_HINTS: tuple[tuple[Any, dict[str, Any]], ...] = (
    (fields.Instant, _INSTANT),
    (fields.CommitHash, _COMMIT_HASH),
    (fields.GitCommitHash, _GIT_COMMIT_HASH),
    (fields.Identifier, _IDENTIFIER),
    (fields.AnyStatus, _ANY_STATUS),
    (fields.CanonicalStatus, _CANONICAL_STATUS),
)

_Error = tuple[str, str]  # (component name, description)
_ERRORS: dict[str, _Error] = {
    "400": ("BadRequest", "Malformed JSON, or JSON nested too deeply."),
    "401": ("Unauthorized", "Missing or wrong bearer token (only when auth is enabled)."),
    "404": ("NotFound", "No run has this event_id."),
    "413": ("PayloadTooLarge", "Body over the size limit, or a batch over the item limit."),
    "422": ("ValidationError", "Invalid input; `detail` lists `{loc, msg, type}` entries."),
    "429": ("RateLimited", "Rate limit exceeded (only when rate limiting is enabled)."),
    "503": (
        "ServiceUnavailable",
        "Busy (requests or body bytes in flight at their bound), or temporarily unable to "
        "answer (database busy or unavailable, shutting down); retry after `Retry-After` "
        "seconds.",
    ),
}
#: Headers an error answer may carry, by status.
_ERROR_HEADERS = {
    "429": ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"),
    "503": ("Retry-After",),
}


@dataclass(frozen=True)
class ApiVariant:
    """What one daemon really answers where the two differ.

    The server has optional auth and rate limiting and the batch ``mode=upsert``;
    spoold has none of those, queues updates it cannot confirm (202) and proxies
    reads (503 when the server is unreachable, 504 when it is too slow, and the
    server's own answers relayed, 401 and 429 included).
    """

    auth: bool
    rate_limit: bool
    upsert: bool
    health: dict[str, Any]  # schema of the /health answer
    health_unhealthy_503: bool  # /health answers 503 when it is unhealthy
    queues_unconfirmed: bool = False
    proxied_reads: bool = False
    run_source_header: dict[str, Any] | None = None  # a header GET run may carry
    errors: dict[str, _Error] = field(default_factory=dict)  # overrides of _ERRORS texts
    heartbeat: bool = False  # serves POST /api/v1/runs/{event_id}/heartbeat


_WRITES = frozenset(
    {"createRun", "batchRuns", "updateRun", "associateCommit", "heartbeatRun", "pruneRuns"}
)
_OPEN = frozenset({"health", "metrics"})  # never a 401 (private fields left out instead)
_RELAYED = " Relayed from the central server."
_PROMETHEUS_TYPES = ("text/plain", "application/openmetrics-text")

_PARAM_TEXTS = {"limit": "Page size."}  # others: their description, or exact match
_PRIVATE_FIELDS = (
    "With TELEMETRY_API_AUTH_PROTECT_READS on, {fields} are included only for a caller "
    "presenting the bearer token; without it (or with a wrong one) they are left out, "
    "never a 401."
)
_NEXT_CURSOR = {
    "description": "Present when more runs follow: send it back as `cursor` (with the same "
    "filters) for the next page. Opaque; absent on the last page.",
    "schema": {"type": "string"},
}
_CREATED = {
    "oneOf": [_ref("CreateResponse"), _ref("DuplicateResponse")],
    "discriminator": {
        "propertyName": "status",
        "mapping": {
            "created": _ref("CreateResponse")["$ref"],
            "duplicate": _ref("DuplicateResponse")["$ref"],
        },
    },
}
_RUNS = {"type": "array", "items": _ref("RunRecord")}
# operationId -> (tag, summary, success status, answer model or schema, answer description)
_OPERATIONS: dict[str, tuple[str, str, str, str | _Schema, str]] = {
    "createRun": ("runs", "Create a run (idempotent)", "201", _CREATED, "Created or duplicate."),
    "listRuns": ("runs", "Query runs", "200", _RUNS, "Matching runs, by created_at DESC."),
    "batchRuns": ("runs", "Create many runs", "200", "BatchResponse", "Counts, item errors."),
    "getRun": ("runs", "Get one run", "200", "RunRecord", "The run."),
    "updateRun": ("runs", "Update a run's given fields", "200", "UpdateResponse", "Fields set."),
    "associateCommit": ("git", "Link a git commit", "200", "AssociateResponse", "Linked."),
    "heartbeatRun": ("runs", "Say a running run is alive", "204", {}, "Heard."),
    "getCommitUrl": ("git", "Web URL of the commit", "200", "CommitUrlResponse", "URL or null."),
    "getRepoUrl": ("git", "Web URL of the repository", "200", "RepoUrlResponse", "URL or null."),
    "health": ("service", "Health check", "200", "HealthResponse", "Service is up."),
    "metrics": ("service", "System-wide statistics", "200", "MetricsResponse", "Counts."),
    "metadata": ("service", "Distinct agents and job types", "200", "MetadataResponse", "Values."),
    "runStats": ("runs", "Run statistics by group", "200", "StatsAnswer", "Groups, by key."),
    "exportRuns": ("runs", "Export every matching run", "200", {}, "The runs, streamed."),
    "pruneRuns": ("service", "Delete old finished runs", "200", {}, "What the pass did."),
}

_INSERT_DESCRIPTION = """\
`mode=insert` (default, as in the guide): the body is an array of RunCreate; valid
items are inserted, existing event_ids count as `duplicates`, each invalid item is
reported in `errors` (index, event_id, message). Answers a BatchResponse."""
_UPSERT_DESCRIPTION = """

`mode=upsert` (an extension used by the sidecar spoold to forward its queue): the
body is an array of UpsertItem. {upsert}
An item with only `update` for an unknown event_id is reported in `errors`. Answers an
UpsertResponse: `updated` counts runs changed by an update, `duplicates` items that
changed nothing (an item whose `source` and `sequence` are older than the last snapshot
of that source applied to the run is one: a batch committed late is never applied over
a newer snapshot)."""
_BATCH_LIMIT = "\n\nA batch with more items than the limit is refused whole with 413."
_QUEUED = (
    "Accepted and queued without confirmation: the run is unknown here and the server "
    "could not be asked. It is applied when the server is back (or dead-lettered if the "
    "server then says the run does not exist)."
)


#: A daemon's own paths (the server's maintenance), built with the shared operation builder.
PathsBuilder = Callable[[ApiVariant, OpBuilder], dict[str, _Schema]]


def build_document(
    *,
    title: str,
    version: str,
    description: str,
    variant: ApiVariant,
    own_paths: Sequence[PathsBuilder] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of one daemon; deterministic, meant to be built once at start."""
    schemas = _model_schemas(variant)
    schemas.update(_service_schemas(variant))
    paths = _paths(variant, own_paths)
    used = {code for item in paths.values() for op in item.values() for code in op["responses"]}
    components: _Schema = {
        "schemas": schemas,
        "responses": {
            name: _error_response(text, _ERROR_HEADERS.get(code, ()))
            for code, (name, text) in _error_table(variant).items()
            if code in used
        },
    }
    if variant.auth:
        components["securitySchemes"] = {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "Checked on writes only when TELEMETRY_API_AUTH_ENABLED=true "
                "(and on reads too with TELEMETRY_API_AUTH_PROTECT_READS=true).",
            }
        }
    document = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "tags": [
            {"name": "runs", "description": "Create, update and query runs."},
            {"name": "git", "description": "Commit association and repository links."},
            {"name": "service", "description": "Health, metrics and metadata."},
        ],
        "paths": paths,
        "components": components,
    }
    # The tables above are shared module state: the caller gets its own copy.
    return copy.deepcopy(document)


def _error_table(variant: ApiVariant) -> dict[str, _Error]:
    table = dict(_ERRORS)
    if variant.proxied_reads:
        table["504"] = ("GatewayTimeout", "The central server did not answer in time.")
    table.update(variant.errors)
    return table


def _model_schemas(variant: ApiVariant) -> dict[str, Any]:
    requests = [m for m in _REQUESTS if variant.upsert or m is not models.UpsertItem]
    answers = [m for m in _ANSWERS if variant.upsert or m is not models.UpsertResponse]
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in requests),
        *((model, "serialization") for model in answers),
    ]
    _, top = models_json_schema(pairs, ref_template=_SCHEMA_REF)
    schemas: dict[str, Any] = top["$defs"]
    for model, _mode in pairs:
        _add_hints(model, schemas[model.__name__])
    schemas["ErrorBody"]["description"] = (
        "Every error answer: `detail` (a message, or a list of `{loc, msg, type}` "
        "entries for 422) and a stable machine-readable `error` code."
    )
    if variant.queues_unconfirmed:
        # spoold answers run_id null when the server could not be asked for it.
        run_id = schemas["AssociateResponse"]["properties"]["run_id"]
        run_id["type"] = ["string", "null"]
        run_id["description"] = "Null when the central server could not be asked for it."
    return schemas


def _add_hints(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Add to each property the constraints its field type enforces in a validator."""
    for name, field_info in model.model_fields.items():
        prop = schema["properties"].get(name)
        for kind, extra in _HINTS:
            if prop is not None and (
                field_info.metadata == FieldInfo.from_annotation(kind).metadata
                or kind in get_args(field_info.annotation)
            ):
                _annotate(prop, extra)


def _annotate(prop: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge ``extra`` into the string branch of a (possibly nullable) property."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "string":
            branch.update({k: v for k, v in extra.items() if k != "description"})
    if "description" in extra:
        before = prop.get("description", "").rstrip(".")
        prop["description"] = f"{before}. {extra['description']}".lstrip(". ")


def _array(name: str, title: str = "") -> _Schema:
    return {"title": title or f"{name} list", "type": "array", "items": _ref(name)}


def _json(schema: _Schema) -> _Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _error_response(text: str, headers: tuple[str, ...]) -> _Schema:
    response = {"description": text, **_json(_ref("ErrorBody"))}
    integer = {"type": "integer", "minimum": 0}
    if headers:
        response["headers"] = {
            name: {
                "description": "Seconds to wait." if name == "Retry-After" else "Rate limit state.",
                "schema": {**integer, "minimum": 1} if name == "Retry-After" else integer,
            }
            for name in headers
        }
    return response


def _object(
    properties: _Schema, *, closed: bool = False, required: tuple[str, ...] = ()
) -> _Schema:
    """An object schema: ``closed`` ones require every property, others allow more."""
    if closed:
        return {"type": "object", "properties": properties, "required": list(properties)}
    schema: _Schema = {"type": "object", "properties": properties, "additionalProperties": True}
    if required:
        schema["required"] = list(required)
    return schema


def _service_schemas(variant: ApiVariant) -> dict[str, _Schema]:
    """Answers that have no pydantic model: links, health, metrics, metadata, queued."""
    text, count, maybe = {"type": "string"}, {"type": "integer"}, {"type": ["string", "null"]}
    url = {**maybe, "description": "Null without git_repo (and hash), or for a self-hosted forge."}
    names = {"type": "array", "items": text}
    per_key = {"type": "object", "additionalProperties": count}
    metrics: _Schema = dict(total_runs=count, agents=per_key, recent_24h=count)
    metrics |= {"runs_by_status": per_key, "performance": _object({})}
    if variant.heartbeat:  # the server's reaper
        reaped = {
            "reaped_runs": {
                **count,
                "description": "Stored runs the stale-run reaper marked timeout (no agent "
                "has finished them since).",
            },
            "reaped_since_start": {
                **count,
                "description": "Runs the reaper marked timeout since the server started.",
            },
        }
        metrics["stale"] = _object(reaped)
    metadata: _Schema = dict(agent_names=names, job_types=names, cache_hit={"type": "boolean"})
    metadata["counts"] = _object(dict(agent_names=count, job_types=count))
    schemas = {
        "CommitUrlResponse": _object(
            dict(event_id=text, commit_url=url, git_repo=maybe, git_commit_hash=maybe), closed=True
        ),
        "RepoUrlResponse": _object(dict(event_id=text, repo_url=url, git_repo=maybe), closed=True),
        "HealthResponse": variant.health,
        "MetricsResponse": _object(metrics, required=("total_runs", "runs_by_status")),
        "MetadataResponse": _object(metadata, required=("agent_names", "job_types")),
    }
    if variant.queues_unconfirmed:
        message = {"type": "string", "description": "Says the server was unreachable."}
        schemas["QueuedUpdateResponse"] = _object(
            dict(
                event_id=text,
                updated={"const": True},
                fields_updated=names,
                queued={"const": True},
                message=message,
            ),
            closed=True,
        )
        schemas["QueuedAssociateResponse"] = _object(
            dict(
                status={"const": "queued"},
                event_id=text,
                run_id=maybe,
                commit_hash=text,
                message=message,
            ),
            closed=True,
        )
    return schemas


def _query_params(model: type[BaseModel] = models.RunQuery) -> list[_Schema]:
    """The filters of GET /api/v1/runs, from RunQuery; an absent one does not filter."""
    schema = model.model_json_schema(ref_template=_SCHEMA_REF)
    _add_hints(model, schema)
    params = []
    for name, prop in schema["properties"].items():
        branch = next(b for b in prop.get("anyOf", [prop]) if b.get("type") != "null")
        param_schema = {k: v for k, v in branch.items() if k not in ("title", "description")}
        if prop.get("default") is not None:
            param_schema["default"] = prop["default"]
        text = prop.get("description") or _PARAM_TEXTS.get(name, "Exact match.")
        param = {"name": name, "in": "query", "description": text, "schema": param_schema}
        if param_schema.get("type") == "array":  # group_by: job_type,day
            param.update(style="form", explode=False)
            param_schema.pop("default", None)
        params.append(param)
    return params


def _error_codes(op_id: str, path: str, variant: ApiVariant, *, has_params: bool) -> set[str]:
    """The error statuses this daemon can answer for this operation."""
    if op_id == "health":
        return set()  # its own 503, if any, is a HealthResponse (see _health_op)
    write = op_id in _WRITES
    codes = {"400", "413", "422", "503"} if write else {"503"}
    if op_id == "metrics" and not variant.proxied_reads:
        codes.discard("503")  # served from the writer's counters: no database read to fail
    if has_params:
        codes.add("422")
    if path not in ("/health", "/metrics"):
        codes.add("503")  # admission control (server.edge.admission)
    if "{event_id}" in path:
        codes.add("404")
    # spoold relays the server's own 401 / 429 on reads; it has neither on writes.
    relays = variant.proxied_reads and not write
    if op_id not in _OPEN and (variant.auth or relays):
        codes.add("401")
    if variant.rate_limit or relays:  # /metrics is rate limited too; /health never
        codes.add("429")
    if variant.proxied_reads and not write:
        codes.add("504")
    return codes


def _op(
    op_id: str,
    path: str,
    variant: ApiVariant,
    body: _Schema | None = None,
    params: list[_Schema] | None = None,
) -> _Schema:
    """One operation with the answers this daemon can give."""
    tag, summary, status, answer, ok_text = _OPERATIONS[op_id]
    codes = _error_codes(op_id, path, variant, has_params=bool(params))
    if "{event_id}" in path:
        schema = {"type": "string", "minLength": 1, "maxLength": fields.IDENTIFIER_MAX_LEN}
        event_id = {"name": "event_id", "in": "path", "required": True, "schema": schema}
        params = [event_id, *(params or [])]
    op: _Schema = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
        if variant.auth:
            op["security"] = [{"bearerAuth": []}]
    schema = answer if isinstance(answer, dict) else _ref(answer)
    if variant.proxied_reads and op_id not in _WRITES and op_id != "health":
        ok_text += _RELAYED
    op["responses"] = {status: {"description": ok_text, **_json(schema)}}
    errors = _error_table(variant)
    for code in sorted(codes):
        op["responses"][code] = {"$ref": f"#/components/responses/{errors[code][0]}"}
    return op


def _batch_op(runs: str, variant: ApiVariant) -> _Schema:
    if not variant.upsert:
        only = {"type": "string", "enum": ["insert"], "default": "insert"}
        mode = {"name": "mode", "in": "query", "description": "Kind of body.", "schema": only}
        op = _op("batchRuns", f"{runs}/batch", variant, _array("RunCreate"), [mode])
        op["description"] = _INSERT_DESCRIPTION + _BATCH_LIMIT
        return op
    modes = {"type": "string", "enum": ["insert", "upsert"], "default": "insert"}
    mode = {"name": "mode", "in": "query", "description": "Kind of body.", "schema": modes}
    # anyOf, not oneOf: `[]` is a body of both modes and an UpsertResponse is also a
    # valid BatchResponse, so oneOf would reject valid exchanges; `mode` decides.
    batch = {"anyOf": [_array("RunCreate", "mode=insert"), _array("UpsertItem", "mode=upsert")]}
    op = _op("batchRuns", f"{runs}/batch", variant, batch, [mode, *_PRESENCE_HEADERS])
    op["summary"] = "Create or upsert many runs"
    ok = op["responses"]["200"]
    ok["content"]["application/json"]["schema"] = {
        "anyOf": [_ref("BatchResponse"), _ref("UpsertResponse")]
    }
    upsert_doc = " ".join((models.UpsertItem.__doc__ or "").split("\n\n", 1)[-1].split())
    op["description"] = (
        _INSERT_DESCRIPTION + _UPSERT_DESCRIPTION.format(upsert=upsert_doc) + _BATCH_LIMIT
    )
    return op


_HEARTBEAT_DESCRIPTION = """\
Refreshes the run's `last_seen_at` (so the stale-run reaper leaves it) and changes
nothing else; `progress`, if given, is merged into `metrics_json` as an RFC 7396 JSON
merge patch (null members remove keys; a run without metrics_json starts from `{}`), and
only then does `updated_at` move. The body may be empty (no content type needed). A run
that has already finished, the reaper's `timeout` included, is left as it is (204: a
heartbeat never revives a run). The usual body size (413) and depth (400) limits apply,
and to the merged metrics_json too (413)."""


def _heartbeat_op(run: str, variant: ApiVariant) -> _Schema:
    op = _op("heartbeatRun", f"{run}/heartbeat", variant, _ref("HeartbeatBody"))
    op["requestBody"]["required"] = False
    op["responses"]["204"] = {"description": "Heard (or the run had already finished)."}
    op["description"] = _HEARTBEAT_DESCRIPTION
    return op


_PRESENCE_HEADERS: list[_Schema] = [
    {
        "name": "X-Spoold-Id",
        "in": "header",
        "required": False,
        "description": "Sent by a sidecar: its stable id. The server records, in the batch's "
        "own transaction, when it last heard from it, and which runs it delivered (the "
        "stale-run reaper waits for a sidecar that cannot deliver). A malformed value: 400, "
        "nothing applied. A presence batch is `[]` with these headers.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    },
    {
        "name": "X-Spoold-Queued-Since",
        "in": "header",
        "required": False,
        "description": "With X-Spoold-Id: the accepted_at of the oldest operation in the "
        "sidecar's spool when it sent the batch; absent or empty when its spool is empty. "
        "Malformed: 400, nothing applied.",
        "schema": {"type": "string", **_INSTANT},
    },
]


def _queued(op: _Schema, answer: str) -> _Schema:
    """Add spoold's 202 answer for an update it keeps without the server's confirmation."""
    op["responses"]["202"] = {"description": _QUEUED, **_json(_ref(answer))}
    op["responses"] = dict(sorted(op["responses"].items()))
    return op


def _health_op(variant: ApiVariant) -> _Schema:
    op = _op("health", "/health", variant)
    if variant.health_unhealthy_503:
        sick = (
            "The database is not answering, or the writer thread has stopped: `status` is "
            "`unhealthy`, with a `reason`."
        )
        op["responses"]["503"] = {"description": sick, **_json(_ref("HealthResponse"))}
    if variant.auth:
        op["description"] = _PRIVATE_FIELDS.format(fields="`db_path`")
    else:
        op["responses"]["200"]["description"] = (
            "Always 200 while the daemon answers; read `status` (ok, degraded, unhealthy)."
        )
    return op


def _metrics_op(variant: ApiVariant) -> _Schema:
    """The guide's JSON, or Prometheus text for a scraper that asks for it (Accept)."""
    op = _op("metrics", "/metrics", variant)
    content = op["responses"]["200"]["content"]
    for media_type in _PROMETHEUS_TYPES:
        content[media_type] = {"schema": {"type": "string"}}
    op["description"] = (
        "JSON counts; with `Accept: text/plain` (or OpenMetrics) the Prometheus exposition "
        + ("of spoold itself." if variant.proxied_reads else "of the server.")
    )
    if variant.auth:
        op["description"] += (
            " Served from counters the writer keeps (no query). `recent_24h` counts runs whose "
            "created_at falls in the last 1,440 whole minutes, the current one included. "
            + _PRIVATE_FIELDS.format(fields="`agents` and `performance.db_path`")
        )
    return op


def _get_run_op(run: str, variant: ApiVariant) -> _Schema:
    op = _op("getRun", run, variant)
    if variant.run_source_header is not None:
        ok = op["responses"]["200"]
        ok["headers"] = copy.deepcopy(variant.run_source_header)
    return op


def _list_op(runs: str, variant: ApiVariant) -> _Schema:
    op = _op("listRuns", runs, variant, params=_query_params())
    op["responses"]["200"]["headers"] = {"X-Next-Cursor": _NEXT_CURSOR}
    return op


_STATS_DESCRIPTION = """\
Runs grouped by `group_by` (none: one group of every matching run), with the list's
filters; `start_time_from` / `start_time_to` bound the window, on start_time. Per group:
runs, runs per status, success rate (success / finished runs), duration p50 / p95 / max
over finished runs with a duration (duration_ms > 0: running runs and runs that reported
none are left out of durations but counted as runs), item totals, first and last start.
day and hour are UTC. Served from daily and hourly rollups the server keeps for finished
runs when the query has no agent_name (filter or group) and no created_at bound; those
read the runs themselves (give them a window). More than 10,000 groups is a 422."""


def _stats_op(variant: ApiVariant) -> _Schema:
    op = _op("runStats", "/api/v1/stats", variant, params=_query_params(stats_models.StatsQuery))
    op["description"] = _STATS_DESCRIPTION
    return op


def _paths(variant: ApiVariant, own_paths: Sequence[PathsBuilder]) -> dict[str, _Schema]:
    runs, run = "/api/v1/runs", "/api/v1/runs/{event_id}"
    update = _op("updateRun", run, variant, _ref("RunUpdate"))
    associate = _op("associateCommit", run, variant, _ref("CommitAssociation"))
    if variant.queues_unconfirmed:
        update = _queued(update, "QueuedUpdateResponse")
        associate = _queued(associate, "QueuedAssociateResponse")
    paths = {
        f"{runs}/export": {"get": export_op(variant, _op, _query_params())},
        runs: {
            "post": _op("createRun", runs, variant, _ref("RunCreate")),
            "get": _list_op(runs, variant),
        },
        f"{runs}/batch": {"post": _batch_op(runs, variant)},
        run: {"get": _get_run_op(run, variant), "patch": update},
        f"{run}/associate-commit": {"post": associate},
        f"{run}/commit-url": {"get": _op("getCommitUrl", run, variant)},
        f"{run}/repo-url": {"get": _op("getRepoUrl", run, variant)},
        "/health": {"get": _health_op(variant)},
        "/metrics": {"get": _metrics_op(variant)},
        "/api/v1/metadata": {"get": _op("metadata", "/api/v1/metadata", variant)},
        "/api/v1/stats": {"get": _stats_op(variant)},
    }
    for builder in own_paths:
        paths.update(builder(variant, _op))
    if variant.heartbeat:
        paths[f"{run}/heartbeat"] = {"post": _heartbeat_op(run, variant)}
    return paths
