"""Operational endpoints: /health, the guide's JSON /metrics, /api/v1/metadata."""

from __future__ import annotations

import asyncio

from aiohttp import web

from server import __version__
from server.contract.fields import CANONICAL_STATUSES
from server.edge.prometheus import exposition, wants_prometheus
from server.edge.responses import json_response
from server.http.auth import READ_GUARD
from server.http.maintenance import PRUNER
from server.http.prometheus import ServerMetrics
from server.http.runs import DATABASE
from server.storage.connection import StorageUnavailable
from server.storage.schema import SCHEMA_VERSION

HEALTH_PING_TIMEOUT_S = 2.0

METRICS: web.AppKey[ServerMetrics] = web.AppKey("server_metrics", ServerMetrics)

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """Really touches the database, on its own connection: answers while a write waits for
    a lock and while every reader is busy. Unhealthy (503) if the writer thread is gone."""
    database = request.app[DATABASE]
    body: dict[str, object] = {
        "status": "ok",
        "version": __version__,
        "journal_mode": database.journal_mode,
        "synchronous": database.synchronous,
        "schema_version": SCHEMA_VERSION,
        "pending_writes": database.writer.pending,
    }
    if request.app[READ_GUARD].reveals(request.headers.get("Authorization")):
        body["db_path"] = str(database.settings.path)
    failure = database.writer.failure
    if failure is not None:
        return _unhealthy(body, f"database writer stopped ({failure}); writes are refused")
    try:
        await asyncio.wait_for(database.ping(), HEALTH_PING_TIMEOUT_S)
    except (StorageUnavailable, TimeoutError) as exc:
        return _unhealthy(body, f"database not answering: {exc or 'timeout'}")
    return json_response(body)


def _unhealthy(body: dict[str, object], reason: str) -> web.Response:
    """503 with the health fields, the reason, and the error shape every 4xx/5xx has."""
    body |= {"status": "unhealthy", "reason": reason, "detail": reason, "error": "unhealthy"}
    return json_response(body, 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """The guide's JSON, or Prometheus text when a scraper asks for it (Accept). Served from
    the writer's counters: no query. Agent names and the path only for a caller that may
    read run data (TELEMETRY_API_AUTH_PROTECT_READS)."""
    database = request.app[DATABASE]
    counts = database.counts()
    if wants_prometheus(request):
        prometheus = request.app[METRICS]
        prometheus.db_size.set(database.size.bytes)
        prometheus.total_runs.set(counts.total_runs)
        for status in CANONICAL_STATUSES:
            prometheus.runs.labels(status).set(counts.by_status.get(status, 0))
        prometheus.observe_reaped(database.reaped.stored, database.reaped.reaped_since_start)
        return exposition(request, prometheus.registry)
    stats = database.writer.stats
    performance: dict[str, object] = {
        "journal_mode": database.journal_mode,
        "synchronous": database.synchronous,
        "write_transactions": stats.groups,
        "write_operations": stats.operations,
        "failed_write_transactions": stats.failed_groups,
    }
    body: dict[str, object] = {"total_runs": counts.total_runs}
    if request.app[READ_GUARD].reveals(request.headers.get("Authorization")):
        body["agents"] = counts.agents
        performance = {"db_path": str(database.settings.path), **performance}
    body |= {
        "recent_24h": counts.recent_24h,
        "runs_by_status": counts.by_status,
        "stale": {
            "reaped_runs": database.reaped.stored,
            "reaped_since_start": database.reaped.reaped_since_start,
        },
        "performance": performance,
    }
    pruner = request.app.get(PRUNER)
    if pruner is not None:
        totals = pruner.totals
        body["retention"] = {
            "passes": totals.passes,
            "failed_passes": totals.failed_passes,
            "deleted_runs": totals.deleted,
            "vacuumed_pages": totals.vacuumed_pages,
            "last_pass": totals.last_pass,
        }
    return json_response(body)


@routes.get("/api/v1/metadata")
async def metadata(request: web.Request) -> web.Response:
    """Distinct values the writer keeps current: no query. ``cache_hit`` stays in the answer
    (the guide shows it) and is always true: the answer always comes from memory."""
    snapshot = request.app[DATABASE].metadata()
    return json_response(
        {
            "agent_names": list(snapshot.agent_names),
            "job_types": list(snapshot.job_types),
            "counts": {
                "agent_names": len(snapshot.agent_names),
                "job_types": len(snapshot.job_types),
            },
            "cache_hit": True,
        }
    )
