"""Handlers of the run endpoints: create, update, associate-commit, batch, queries."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.contract import answers
from server.contract.batch import validate_batch
from server.contract.codec import dumps
from server.contract.errors import BadRequest, ValidationFailed
from server.contract.models import (
    BatchItemError,
    CommitAssociation,
    RunCreate,
    RunQuery,
    UpsertItem,
)
from server.contract.run_record import with_urls
from server.contract.timestamps import TimestampError, normalize_timestamp
from server.contract.updates import without_unchanged_run_id
from server.contract.urls import build_commit_url, build_repo_url
from server.contract.validation import parse_model
from server.edge.requests import (
    event_id_of,
    json_fields_context,
    not_found,
    read_json,
    read_patch,
)
from server.edge.responses import json_response
from server.postgres.store import RunStore
from server.storage.cursor import InvalidCursor
from server.storage.sidecars import SIDECAR_ID, Presence

#: The database the app factory chose at start-up (``server.app.open_database``).
DATABASE: web.AppKey[RunStore] = web.AppKey("database", RunStore)
BATCH_MAX_ITEMS: web.AppKey[int] = web.AppKey("batch_max_items", int)

routes = web.RouteTableDef()


@routes.post("/api/v1/runs")
async def create_run(request: web.Request) -> web.Response:
    run = parse_model(RunCreate, await read_json(request), context=json_fields_context(request))
    if await request.app[DATABASE].create(run):
        return json_response(answers.created(run.event_id, run.run_id), 201)
    return json_response(answers.duplicate(run.event_id), 201)


@routes.patch("/api/v1/runs/{event_id}")
async def update_run(request: web.Request) -> web.Response:
    event_id, changes = await read_patch(request)
    database = request.app[DATABASE]
    if "run_id" in changes:  # rare: an echoed run_id equal to the stored one is no update
        stored = await database.get(event_id)
        if stored is None:
            raise not_found(event_id)
        changes = without_unchanged_run_id(changes, stored["run_id"])
    if not await database.patch(event_id, changes):
        raise not_found(event_id)
    return json_response(answers.updated(event_id, changes))


@routes.post("/api/v1/runs/{event_id}/associate-commit")
async def associate_commit(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    association = parse_model(CommitAssociation, await read_json(request))
    run_id = await request.app[DATABASE].update(event_id, association.changes())
    if run_id is None:
        raise not_found(event_id)
    return json_response(answers.associated(event_id, run_id, association.commit_hash))


#: Request headers of a sidecar's batch (see ``server.storage.sidecars``).
SIDECAR_ID_HEADER = "X-Spoold-Id"
QUEUED_SINCE_HEADER = "X-Spoold-Queued-Since"


def presence_of(request: web.Request) -> Presence | None:
    """The sending sidecar's presence, from its headers; None for a direct client.
    A malformed header is a 400 before anything is read or applied."""
    ids = request.headers.getall(SIDECAR_ID_HEADER, [])
    if not ids:
        return None
    if len(ids) > 1 or SIDECAR_ID.fullmatch(ids[0]) is None:
        raise BadRequest(f"{SIDECAR_ID_HEADER} must be one value of 1-64 of A-Z a-z 0-9 . _ -")
    since = request.headers.getall(QUEUED_SINCE_HEADER, [])
    if len(since) > 1:
        raise BadRequest(f"{QUEUED_SINCE_HEADER} must be given at most once")
    queued_since = None
    if since and since[0].strip():
        try:
            queued_since = normalize_timestamp(since[0])
        except TimestampError as exc:
            raise BadRequest(f"{QUEUED_SINCE_HEADER}: {exc}") from exc
    return Presence(ids[0], queued_since)


@routes.post("/api/v1/runs/batch")
async def create_batch(request: web.Request) -> web.Response:
    mode = request.query.get("mode", "insert")
    if mode not in ("insert", "upsert"):
        raise ValidationFailed(
            [{"loc": ["query", "mode"], "msg": "mode must be 'insert' or 'upsert'", "type": "enum"}]
        )
    presence = presence_of(request)
    body = await read_json(request)
    database = request.app[DATABASE]
    max_items = request.app[BATCH_MAX_ITEMS]
    if mode == "upsert":  # create/update sit at level 3: array > item > create
        context = json_fields_context(request, level=3)
        return await _upsert_batch(database, body, max_items, context, presence)
    batch = validate_batch(
        body, RunCreate, max_items=max_items, context=json_fields_context(request, level=2)
    )
    inserted = await database.insert_batch([run for _, run in batch.valid], presence)
    return json_response(
        answers.batch_inserted(inserted, len(batch.valid), batch.errors, batch.total)
    )


async def _upsert_batch(
    database: RunStore,
    body: Any,
    max_items: int,
    context: dict[str, Any],
    presence: Presence | None,
) -> web.Response:
    batch = validate_batch(body, UpsertItem, max_items=max_items, context=context)
    summary = await database.upsert_batch([item for _, item in batch.valid], presence)
    errors = list(batch.errors)
    for position in summary.not_found:
        index, item = batch.valid[position]
        errors.append(
            BatchItemError(
                index=index,
                event_id=item.event_id,
                message="Run not found: an update for an unknown event_id needs a create",
            )
        )
    errors.sort(key=lambda error: error.index)
    return json_response(
        {
            "inserted": summary.inserted,
            "updated": summary.updated,
            "duplicates": summary.unchanged,
            "errors": [error.model_dump() for error in errors],
            "total": batch.total,
        }
    )


#: Answer header naming where the next page starts (absent on the last page).
NEXT_CURSOR_HEADER = "X-Next-Cursor"


@routes.get("/api/v1/runs")
async def list_runs(request: web.Request) -> web.Response:
    """A page of runs (a plain array, as the guide has it); ``X-Next-Cursor`` continues it."""
    # An empty value means "no filter", as the reference treats `?status=`.
    params = {key: value for key, value in request.query.items() if value != ""}
    query = parse_model(RunQuery, params, location="query")
    database = request.app[DATABASE]
    scope = dumps(query.filters()).decode()
    after = None
    if query.cursor is not None:
        try:
            after = database.cursors.decode(query.cursor, scope)
        except InvalidCursor as exc:
            raise ValidationFailed(
                [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}]
            ) from exc
    page = await database.query_json(query, after)
    response = web.Response(body=page.body, content_type="application/json")
    if page.next_position is not None:
        response.headers[NEXT_CURSOR_HEADER] = database.cursors.encode(page.next_position, scope)
    return response


@routes.get("/api/v1/runs/{event_id}")
async def get_run(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    run = await request.app[DATABASE].get(event_id)
    if run is None:
        raise not_found(event_id)
    return json_response(with_urls(run))


@routes.get("/api/v1/runs/{event_id}/commit-url")
async def commit_url(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    run = await request.app[DATABASE].get(event_id)
    if run is None:
        raise not_found(event_id)
    return json_response(
        {
            "event_id": event_id,
            "commit_url": build_commit_url(run["git_repo"], run["git_commit_hash"]),
            "git_repo": run["git_repo"],
            "git_commit_hash": run["git_commit_hash"],
        }
    )


@routes.get("/api/v1/runs/{event_id}/repo-url")
async def repo_url(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    run = await request.app[DATABASE].get(event_id)
    if run is None:
        raise not_found(event_id)
    return json_response(
        {
            "event_id": event_id,
            "repo_url": build_repo_url(run["git_repo"]),
            "git_repo": run["git_repo"],
        }
    )
