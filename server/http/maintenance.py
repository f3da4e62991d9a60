"""Retention in the running server: the background prune task and the operator's endpoint.

``telemetry-server prune`` goes through ``POST /api/v1/maintenance/prune`` when a
server is running, because the server's run counters and distinct values live in
its memory and are kept by triggers on *its* writer connection: a delete made by
another process would leave them wrong until a restart. The batches go through
the server's one writer, interleaved with client writes.

Without auth, the endpoint answers only loopback callers (403 otherwise): a mass
delete is not something anyone who can reach the port may do. With auth it needs
the token like every write.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from server.contract.errors import ApiError, ValidationFailed
from server.contract.validation import parse_model
from server.edge.requests import read_json
from server.edge.responses import json_response
from server.http.prometheus import ServerMetrics
from server.http.runs import DATABASE
from server.reaper import STOP_WAIT_S, raise_if_cancelled
from server.storage.connection import StorageUnavailable
from server.storage.retention import (
    PrunePlan,
    PruneReport,
    PruneRunner,
    RetentionError,
    check_statuses,
    cut_for,
    parse_age,
)

PRUNER: web.AppKey[PruneRunner] = web.AppKey("pruner", PruneRunner)
#: Whether a caller without a token may prune (auth off): loopback callers only.
AUTH_ENABLED: web.AppKey[bool] = web.AppKey("maintenance_auth_enabled", bool)

log = structlog.get_logger("server.retention")
routes = web.RouteTableDef()


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class PruneRequest(BaseModel):
    """Body of ``POST /api/v1/maintenance/prune``."""

    model_config = ConfigDict(extra="forbid")

    older_than: str = Field(
        max_length=16,
        description="Age of the cut: whole days (`90d` or `90`), weeks (`12w`) or hours "
        "(`36h`); at least 1 hour.",
        examples=["90d"],
    )
    statuses: list[str] | None = Field(
        default=None,
        max_length=5,
        description="Finished statuses to delete (default: all but running; running runs "
        "are never deleted).",
    )
    # Strict: "no" or "0" read as false would delete for real what was meant as a dry run.
    dry_run: StrictBool = Field(
        default=False, description="Only count what would be deleted (a JSON true or false)."
    )


def plan_of(request: PruneRequest) -> PrunePlan:
    try:
        return PrunePlan(cut_for(parse_age(request.older_than)), check_statuses(request.statuses))
    except RetentionError as exc:
        raise ValidationFailed([{"loc": ["body"], "msg": str(exc), "type": "value_error"}]) from exc


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return remote == "unix"  # not served today; a unix socket is local by construction


@routes.post("/api/v1/maintenance/prune")
async def prune(request: web.Request) -> web.Response:
    """Delete (or, dry, count) finished runs older than the cut; answers the pass's summary."""
    if not request.app[AUTH_ENABLED] and not _loopback(request.remote):
        raise Forbidden("pruning without auth is only allowed from the server's own host")
    body = parse_model(PruneRequest, await read_json(request))
    report = await request.app[PRUNER].run(plan_of(body), dry_run=body.dry_run)
    if body.dry_run:
        log.info("prune_previewed", **report.as_dict())
    return json_response(report.as_dict())


def create_pruner(app: web.Application, metrics: ServerMetrics) -> PruneRunner:
    database = app[DATABASE]

    def observe(report: PruneReport) -> None:
        metrics.prune_passes.inc()
        for status, n in report.by_status.items():
            metrics.pruned_runs.labels(status).inc(n)
        metrics.vacuumed_pages.inc(report.vacuumed_pages)
        metrics.prune_max_batch_seconds.set(report.max_batch_s)
        log.info("prune_pass", **report.as_dict())

    return database.pruner(on_report=observe)


def retention_ctx(
    metrics: ServerMetrics, days: int, interval_s: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup context: a pruner for the endpoint and, with ``days`` > 0, the
    background task (one pass at start-up, then every ``interval_s``), stopped before
    the database closes."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pruner = create_pruner(app, metrics)
        app[PRUNER] = pruner
        lead = app[DATABASE].lead
        task = asyncio.create_task(_every(pruner, days, interval_s, lead)) if days > 0 else None
        yield
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_WAIT_S)  # bounded, whatever it does

    return ctx


async def _every(
    pruner: PruneRunner, days: int, interval_s: float, lead: Callable[[], Awaitable[bool]]
) -> None:
    """A pass now and every ``interval_s``, on the elected replica only (PostgreSQL)."""
    plan_statuses = check_statuses(None)
    while True:
        plan = PrunePlan(cut_for(parse_age(f"{days}d")), plan_statuses)
        try:
            if await lead():
                await pruner.run(plan)
        except StorageUnavailable as exc:  # the database is busy or full: next time
            log.warning("prune_pass_failed", error=str(exc))
        except Exception as exc:  # never let the task die silently
            log.exception("prune_pass_crashed", error=str(exc))
        raise_if_cancelled()
        await asyncio.sleep(interval_s)
