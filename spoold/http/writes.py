"""Write endpoints: validated with the server's own models, answered after the local fsync."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from server.contract import answers
from server.contract.batch import validate_batch
from server.contract.errors import ServiceUnavailable, ValidationFailed, retry_after
from server.contract.models import CommitAssociation, RunCreate
from server.contract.timestamps import utc_now
from server.contract.updates import without_unchanged_run_id
from server.contract.validation import parse_model
from server.edge.requests import (
    event_id_of,
    json_fields_context,
    not_found,
    read_json,
    read_patch,
)
from server.edge.responses import json_response
from spoold.accept.acceptor import Accepted
from spoold.forward.limits import UpstreamLimits
from spoold.http.state import SIDECAR, Sidecar
from spoold.spool import SpoolError, SpoolFull
from spoold.spool.operations import commit_op, create_op, update_op
from spoold.upstream.client import UpstreamUnavailable, lookup_verdict

routes = web.RouteTableDef()


def fits_upstream(sidecar: Sidecar, op: dict[str, Any]) -> None:
    """Refuse now, with the server's own 413/400, what the server would refuse in a batch."""
    config = sidecar.config
    UpstreamLimits(config.upstream_max_body_bytes, config.upstream_max_json_depth).check(op)


async def accept(sidecar: Sidecar, op: dict[str, Any], *, verified: bool = False) -> Accepted:
    """Check op against the server's limits, then spool it durably."""
    fits_upstream(sidecar, op)
    return await spool(sidecar, op, verified=verified)


async def spool(sidecar: Sidecar, op: dict[str, Any], *, verified: bool = False) -> Accepted:
    """Spool a checked op durably, translating back-pressure and disk trouble into 503."""
    try:
        result = await sidecar.acceptor.submit(op, verified=verified)
    except SpoolFull as exc:
        raise ServiceUnavailable(
            f"spool full, retry later: {exc}", headers=retry_after(exc.retry_after_s)
        ) from exc
    except SpoolError as exc:
        raise ServiceUnavailable(f"spool unavailable: {exc}", headers=retry_after(5)) from exc
    if result.outcome in ("created", "accepted"):
        sidecar.drainer.wakeup.set()
    return result


@routes.post("/api/v1/runs")
async def create_run(request: web.Request) -> web.Response:
    run = parse_model(RunCreate, await read_json(request), context=json_fields_context(request))
    result = await accept(request.app[SIDECAR], create_op(run, utc_now()))
    if result.outcome == "duplicate":
        return json_response(answers.duplicate(run.event_id), 201)
    return json_response(answers.created(run.event_id, run.run_id), 201)


async def _accept_update(
    sidecar: Sidecar, event_id: str, op: dict[str, Any]
) -> tuple[Accepted, bool]:
    """Accept an update; for a run unknown here, ask the server first.

    Returns the result and whether it was queued without the server confirming the run.
    """
    result = await accept(sidecar, op)
    if result.outcome != "unknown":
        return result, False
    try:
        reply = await sidecar.client.lookup_run(event_id)
    except UpstreamUnavailable:
        op = _accepted_now(op)
        return await spool(sidecar, {**op, "unconfirmed": True}, verified=True), True
    verdict = lookup_verdict(reply, event_id)
    if verdict == "missing":
        raise not_found(event_id)
    op = _accepted_now(op)
    if verdict == "unknown":  # the server cannot say now: keep the update, deliver later
        return await spool(sidecar, {**op, "unconfirmed": True}, verified=True), True
    result = await spool(sidecar, op, verified=True)
    return Accepted(result.outcome, result.run_id or _run_id_of(reply.body)), False


def _accepted_now(op: dict[str, Any]) -> dict[str, Any]:
    """The write stamped after its lookup: the agent was alive while it waited for the
    answer, and a write spooled behind writes accepted after it would be older than the
    spool's oldest group, which ``X-Spoold-Queued-Since`` is read from."""
    return {**op, "accepted_at": utc_now()}


def _run_id_of(body: bytes) -> str | None:
    try:
        value = orjson.loads(body).get("run_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


async def _stored_run_id(sidecar: Sidecar, event_id: str) -> str | None:
    """The run's current run_id as this sidecar knows it (its queue is newer than the
    server), else as the server says; None if nobody can tell now."""
    known = await asyncio.to_thread(sidecar.reader_index.get, event_id)
    if known is not None and isinstance(known.snapshot.get("run_id"), str):
        return str(known.snapshot["run_id"])
    try:
        reply = await sidecar.client.lookup_run(event_id)
    except UpstreamUnavailable:
        return None
    return _run_id_of(reply.body) if lookup_verdict(reply, event_id) == "found" else None


@routes.patch("/api/v1/runs/{event_id}")
async def update_run(request: web.Request) -> web.Response:
    event_id, changes = await read_patch(request)
    sidecar = request.app[SIDECAR]
    if "run_id" in changes:
        changes = without_unchanged_run_id(changes, await _stored_run_id(sidecar, event_id))
    _, queued = await _accept_update(sidecar, event_id, update_op(event_id, changes, utc_now()))
    answer = answers.updated(event_id, changes)
    if queued:
        answer["queued"] = True
        answer["message"] = "server unreachable: update queued and will be applied when it is back"
        return json_response(answer, 202)
    return json_response(answer)


@routes.post("/api/v1/runs/{event_id}/associate-commit")
async def associate_commit(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    association = parse_model(CommitAssociation, await read_json(request))
    sidecar = request.app[SIDECAR]
    result, queued = await _accept_update(
        sidecar, event_id, commit_op(event_id, association, utc_now())
    )
    run_id = result.run_id
    if run_id is None and not queued:  # a run the server confirmed earlier: ask for its run_id
        try:
            reply = await sidecar.client.lookup_run(event_id)
            found = lookup_verdict(reply, event_id) == "found"  # this run, not any 200
            run_id = _run_id_of(reply.body) if found else None
        except UpstreamUnavailable:
            run_id = None
    answer = answers.associated(event_id, run_id, association.commit_hash)
    if queued:
        answer["status"] = "queued"
        answer["message"] = (
            "server unreachable: association queued and will be applied when it is back"
        )
        return json_response(answer, 202)
    return json_response(answer)


@routes.post("/api/v1/runs/batch")
async def create_batch(request: web.Request) -> web.Response:
    if request.query.get("mode", "insert") != "insert":
        raise ValidationFailed(
            [
                {
                    "loc": ["query", "mode"],
                    "msg": "the sidecar accepts mode=insert only",
                    "type": "enum",
                }
            ]
        )
    sidecar = request.app[SIDECAR]
    batch = validate_batch(
        await read_json(request),
        RunCreate,
        max_items=sidecar.config.batch_max_items,
        context=json_fields_context(request, level=2),
    )
    now = utc_now()
    ops = [create_op(run, now) for _, run in batch.valid]
    for op in ops:  # all or nothing, as the server refuses a body it cannot take
        fits_upstream(sidecar, op)
    results = await asyncio.gather(*(spool(sidecar, op) for op in ops))
    inserted = sum(1 for result in results if result.outcome == "created")
    return json_response(answers.batch_inserted(inserted, len(results), batch.errors, batch.total))
