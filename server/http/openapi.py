"""The OpenAPI 3.1 document of the API, generated from the shared contract models.

Constraints that live in validators rather than in types (statuses, instants,
commit hashes) are added by recognising those field types, so they cannot drift.
"""

from __future__ import annotations

import copy
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from server.contract import fields, models

_Schema = dict[str, Any]
_SCHEMA_REF = "#/components/schemas/{model}"


def _ref(name: str) -> _Schema:
    return {"$ref": _SCHEMA_REF.format(model=name)}


_REQUESTS = (models.RunCreate, models.RunUpdate, models.CommitAssociation, models.UpsertItem)
_ANSWERS = (
    *(models.CreateResponse, models.DuplicateResponse, models.UpdateResponse),
    *(models.AssociateResponse, models.BatchResponse, models.UpsertResponse),
    *(models.RunRecord, models.ErrorBody),
)
_INSTANT = {
    "format": "date-time",
    "description": "ISO 8601 instant with a timezone (e.g. 2026-01-12T10:30:00Z); "
    "values without a timezone are refused.",
}
_COMMIT_HASH = {"pattern": "^[0-9a-fA-F]{7,40}$", "minLength": 7, "maxLength": 40}
_ANY_STATUS = {
    "enum": [*fields.CANONICAL_STATUSES, *fields.STATUS_ALIASES],
    "description": "Canonical status, or an alias (failed, completed, succeeded) "
    "that is normalised to its canonical value.",
}
_CANONICAL_STATUS = {
    "enum": list(fields.CANONICAL_STATUSES),
    "description": "Canonical status only.",
}
_HINTS: tuple[tuple[object, dict[str, Any]], ...] = (
    (fields.Instant, _INSTANT),
    (fields.CommitHash, _COMMIT_HASH),
    (fields.AnyStatus, _ANY_STATUS),
    (fields.CanonicalStatus, _CANONICAL_STATUS),
)

_ERRORS = {
    "400": ("BadRequest", "Malformed JSON, or JSON nested too deeply."),
    "401": ("Unauthorized", "Missing or wrong bearer token (only when auth is enabled)."),
    "404": ("NotFound", "No run has this event_id."),
    "413": ("PayloadTooLarge", "Body over the size limit, or a batch over the item limit."),
    "422": ("ValidationError", "Invalid input; `detail` lists `{loc, msg, type}` entries."),
    "429": ("RateLimited", "Rate limit exceeded (only when rate limiting is enabled)."),
    "503": (
        "ServiceUnavailable",
        "Busy (requests or body bytes in flight at their bound), or temporarily unable to "
        "accept writes; retry after `Retry-After` seconds.",
    ),
}

_PARAM_TEXTS = {"limit": "Page size.", "offset": "Runs to skip."}  # others: exact match
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
_BATCHED = {"anyOf": [_ref("BatchResponse"), _ref("UpsertResponse")]}
_RUNS = {"type": "array", "items": _ref("RunRecord")}
# operationId -> (tag, summary, success status, answer model or schema, answer description)
_OPERATIONS: dict[str, tuple[str, str, str, str | _Schema, str]] = {
    "createRun": ("runs", "Create a run (idempotent)", "201", _CREATED, "Created or duplicate."),
    "listRuns": ("runs", "Query runs", "200", _RUNS, "Matching runs, by created_at DESC."),
    "batchRuns": ("runs", "Create or upsert many runs", "200", _BATCHED, "Counts, item errors."),
    "getRun": ("runs", "Get one run", "200", "RunRecord", "The run."),
    "updateRun": ("runs", "Update a run's given fields", "200", "UpdateResponse", "Fields set."),
    "associateCommit": ("git", "Link a git commit", "200", "AssociateResponse", "Linked."),
    "getCommitUrl": ("git", "Web URL of the commit", "200", "CommitUrlResponse", "URL or null."),
    "getRepoUrl": ("git", "Web URL of the repository", "200", "RepoUrlResponse", "URL or null."),
    "health": ("service", "Health check", "200", "HealthResponse", "Service is up."),
    "metrics": ("service", "System-wide statistics", "200", "MetricsResponse", "Counts."),
    "metadata": ("service", "Distinct agents and job types", "200", "MetadataResponse", "Values."),
}

_BATCH_DESCRIPTION = """\
`mode=insert` (default, as in the guide): the body is an array of RunCreate; valid
items are inserted, existing event_ids count as `duplicates`, each invalid item is
reported in `errors` (index, event_id, message). Answers a BatchResponse.

`mode=upsert` (an extension used by the sidecar spoold to forward its queue): the
body is an array of UpsertItem. {upsert}
An item with only `update` for an unknown event_id is reported in `errors`. Answers an
UpsertResponse: `updated` counts runs changed by an update, `duplicates` items that
changed nothing.

A batch with more items than the server's limit is refused whole with 413."""


def build_openapi(*, title: str, version: str, description: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API; deterministic, meant to be built once at start."""
    schemas = _model_schemas()
    schemas.update(_service_schemas())
    document = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "tags": [
            {"name": "runs", "description": "Create, update and query runs."},
            {"name": "git", "description": "Commit association and repository links."},
            {"name": "service", "description": "Health, metrics and metadata."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "responses": {
                name: _error_response(text, with_retry=code in ("429", "503"))
                for code, (name, text) in _ERRORS.items()
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Checked on writes only when TELEMETRY_API_AUTH_ENABLED=true "
                    "(and on reads too with TELEMETRY_API_AUTH_PROTECT_READS=true).",
                }
            },
        },
    }
    # The tables above are shared module state: the caller gets its own copy.
    return copy.deepcopy(document)


def _model_schemas() -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in _REQUESTS),
        *((model, "serialization") for model in _ANSWERS),
    ]
    _, top = models_json_schema(pairs, ref_template=_SCHEMA_REF)
    schemas: dict[str, Any] = top["$defs"]
    for model, _mode in pairs:
        _add_hints(model, schemas[model.__name__])
    schemas["ErrorBody"]["description"] = (
        "Every error answer: `detail` (a message, or a list of `{loc, msg, type}` "
        "entries for 422) and a stable machine-readable `error` code."
    )
    return schemas


def _add_hints(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Add to each property the constraints its field type enforces in a validator."""
    for name, field in model.model_fields.items():
        prop = schema["properties"].get(name)
        for kind, extra in _HINTS:
            if prop is not None and (
                field.metadata == list(get_args(kind)[1:]) or kind in get_args(field.annotation)
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


def _error_response(text: str, *, with_retry: bool) -> _Schema:
    response = {"description": text, **_json(_ref("ErrorBody"))}
    if with_retry:
        seconds = {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}
        response["headers"] = {"Retry-After": seconds}
    return response


def _object(properties: _Schema, *, closed: bool = False) -> _Schema:
    """An object schema: ``closed`` ones require every property, others allow more."""
    extra = {"required": list(properties)} if closed else {"additionalProperties": True}
    return {"type": "object", "properties": properties, **extra}


def _service_schemas() -> dict[str, _Schema]:
    """Answers that have no pydantic model: links, health, metrics, metadata."""
    text, count, maybe = {"type": "string"}, {"type": "integer"}, {"type": ["string", "null"]}
    url = {**maybe, "description": "Null without git_repo (and hash), or for a self-hosted forge."}
    names = {"type": "array", "items": text}
    per_key = {"type": "object", "additionalProperties": count}
    health: _Schema = {"status": {"type": "string", "enum": ["ok", "unhealthy"]}}
    health |= dict.fromkeys(("version", "db_path", "journal_mode", "synchronous", "reason"), text)
    health |= dict.fromkeys(("schema_version", "pending_writes"), count)
    metrics: _Schema = dict(total_runs=count, agents=per_key, recent_24h=count)
    metrics |= {"runs_by_status": per_key, "performance": _object({})}
    metadata: _Schema = dict(agent_names=names, job_types=names, cache_hit={"type": "boolean"})
    metadata["counts"] = _object(dict(agent_names=count, job_types=count))
    return {
        "CommitUrlResponse": _object(
            dict(event_id=text, commit_url=url, git_repo=maybe, git_commit_hash=maybe), closed=True
        ),
        "RepoUrlResponse": _object(dict(event_id=text, repo_url=url, git_repo=maybe), closed=True),
        "HealthResponse": _object(health),
        "MetricsResponse": _object(metrics),
        "MetadataResponse": _object(metadata),
    }


def _query_params() -> list[_Schema]:
    """The filters of GET /api/v1/runs, from RunQuery; an absent one does not filter."""
    schema = models.RunQuery.model_json_schema(ref_template=_SCHEMA_REF)
    _add_hints(models.RunQuery, schema)
    params = []
    for name, prop in schema["properties"].items():
        branch = next(b for b in prop.get("anyOf", [prop]) if b.get("type") != "null")
        param_schema = {k: v for k, v in branch.items() if k != "title"}
        if prop.get("default") is not None:
            param_schema["default"] = prop["default"]
        text = prop.get("description") or _PARAM_TEXTS.get(name, "Exact match.")
        params.append({"name": name, "in": "query", "description": text, "schema": param_schema})
    return params


def _op(
    op_id: str, path: str, body: _Schema | None = None, params: list[_Schema] | None = None
) -> _Schema:
    """One operation; writes (those with a body) carry the bearer scheme and write errors."""
    tag, summary, status, answer, ok_text = _OPERATIONS[op_id]
    codes = {"400", "401", "413", "422", "503"} if body is not None else set()
    if params:
        codes.add("422")
    if path not in ("/health", "/metrics"):  # never rate limited
        codes.add("429")
        codes.add("503")  # admission control (server.http.admission)
    if "{event_id}" in path:
        codes.add("404")
        schema = {"type": "string", "minLength": 1, "maxLength": fields.IDENTIFIER_MAX_LEN}
        event_id = {"name": "event_id", "in": "path", "required": True, "schema": schema}
        params = [event_id, *(params or [])]
    op: _Schema = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
        op["security"] = [{"bearerAuth": []}]
    schema = answer if isinstance(answer, dict) else _ref(answer)
    op["responses"] = {status: {"description": ok_text, **_json(schema)}}
    for code in sorted(codes):
        op["responses"][code] = {"$ref": f"#/components/responses/{_ERRORS[code][0]}"}
    return op


def _paths() -> dict[str, _Schema]:
    runs, run = "/api/v1/runs", "/api/v1/runs/{event_id}"
    modes = {"type": "string", "enum": ["insert", "upsert"], "default": "insert"}
    mode = {"name": "mode", "in": "query", "description": "Kind of body.", "schema": modes}
    # anyOf, not oneOf: `[]` is a body of both modes and an UpsertResponse is also a
    # valid BatchResponse, so oneOf would reject valid exchanges; `mode` decides.
    batch = {"anyOf": [_array("RunCreate", "mode=insert"), _array("UpsertItem", "mode=upsert")]}
    batch_op = _op("batchRuns", f"{runs}/batch", batch, [mode])
    upsert_doc = " ".join((models.UpsertItem.__doc__ or "").split("\n\n", 1)[-1].split())
    batch_op["description"] = _BATCH_DESCRIPTION.format(upsert=upsert_doc)
    health = _op("health", "/health")
    sick = "The database is not answering: `status` is `unhealthy`, with a `reason`."
    health["responses"]["503"] = {"description": sick, **_json(_ref("HealthResponse"))}
    return {
        runs: {
            "post": _op("createRun", runs, _ref("RunCreate")),
            "get": _op("listRuns", runs, params=_query_params()),
        },
        f"{runs}/batch": {"post": batch_op},
        run: {
            "get": _op("getRun", run),
            "patch": _op("updateRun", run, _ref("RunUpdate")),
        },
        f"{run}/associate-commit": {"post": _op("associateCommit", run, _ref("CommitAssociation"))},
        f"{run}/commit-url": {"get": _op("getCommitUrl", run)},
        f"{run}/repo-url": {"get": _op("getRepoUrl", run)},
        "/health": {"get": health},
        "/metrics": {"get": _op("metrics", "/metrics")},
        "/api/v1/metadata": {"get": _op("metadata", "/api/v1/metadata")},
    }
