"""Operational endpoints: /health, the guide's JSON /metrics, /api/v1/metadata."""

from __future__ import annotations

import asyncio

from aiohttp import web

from server import __version__
from server.contract.codec import embed
from server.contract.fields import CANONICAL_STATUSES
from server.edge.prometheus import exposition, wants_prometheus
from server.edge.responses import json_response
from server.http.auth import READ_GUARD
from server.http.maintenance import PRUNER
from server.http.prometheus import ServerMetrics
from server.http.runs import DATABASE
from server.storage.connection import StorageUnavailable

HEALTH_PING_TIMEOUT_S = 2.0
#: Where the database is, under the name /health and /metrics show it (to readers only):
#: a file path, or the URL without its password.
_LOCATION = {"sqlite": "db_path", "postgresql": "database_url"}

METRICS: web.AppKey[ServerMetrics] = web.AppKey("server_metrics", ServerMetrics)

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """Really touches the database, on its own connection: answers while a write waits for
    a lock and while every reader is busy. Unhealthy (503) if the writer thread is gone
    or the database does not answer."""
    database = request.app[DATABASE]
    status = database.status()
    body: dict[str, object] = {
        "status": "ok",
        "version": __version__,
        "backend": status.backend,
        **status.settings,
        "schema_version": status.schema_version,
        "pending_writes": status.pending_writes,
    }
    if request.app[READ_GUARD].reveals(request.headers.get("Authorization")):
        body[_LOCATION[status.backend]] = status.location
    failure = status.failure
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
    the counts the database keeps (SQLite: the writer's, no query; PostgreSQL: counted at
    most once a second, see ``server.postgres.snapshot``). Agent names and the path only for a caller that may
    read run data (TELEMETRY_API_AUTH_PROTECT_READS)."""
    database = request.app[DATABASE]
    counts = await database.read_counts()
    status = database.status()
    if wants_prometheus(request):
        prometheus = request.app[METRICS]
        prometheus.db_size.set(status.size_bytes)
        prometheus.total_runs.set(counts.total_runs)
        for name in CANONICAL_STATUSES:
            prometheus.runs.labels(name).set(counts.by_status.get(name, 0))
        prometheus.observe_reaped(status.reaped_runs, status.reaped_since_start)
        return exposition(request, prometheus.registry)
    performance: dict[str, object] = {
        "backend": status.backend,
        **status.settings,
        "write_transactions": status.write_transactions,
        "write_operations": status.write_operations,
        "failed_write_transactions": status.failed_write_transactions,
    }
    body: dict[str, object] = {"total_runs": counts.total_runs}
    if request.app[READ_GUARD].reveals(request.headers.get("Authorization")):
        body["agents"] = embed(counts.agents_json)
        performance = {_LOCATION[status.backend]: status.location, **performance}
    body |= {
        "recent_24h": counts.recent_24h,
        "runs_by_status": counts.by_status,
        "stale": {
            "reaped_runs": status.reaped_runs,
            "reaped_since_start": status.reaped_since_start,
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
    """Distinct values the database keeps current (no query on SQLite; on PostgreSQL a
    reload only after a replica wrote a new one). ``cache_hit`` stays in the answer
    (the guide shows it) and is always true: the answer always comes from memory."""
    snapshot = await request.app[DATABASE].read_metadata()
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
