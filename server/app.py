"""The server's app factory: wires routes, middlewares and the database lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from server import __version__
from server.config import ServerConfig
from server.edge.admission import ADMISSION, Admission, admission_middleware
from server.edge.boundary import REQUEST_OBSERVER, error_boundary
from server.edge.docs import docs_routes
from server.edge.requests import MAX_JSON_DEPTH
from server.http import export, heartbeat, maintenance, ops, runs, stats
from server.http.auth import READ_GUARD, ReadGuard
from server.http.middleware import (
    RATE_LIMITER,
    auth_middleware,
    rate_limit_middleware,
    storage_errors,
)
from server.http.openapi import build_openapi
from server.http.prometheus import ServerMetrics
from server.http.ratelimit import RateLimiter
from server.http.shared_ratelimit import SharedRateLimiter, shared_rate_limit_ctx
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.store import RunStore
from server.postgres.url import DatabaseUrl
from server.reaper import reaper_ctx
from server.runtime.daemon import STOP_DEADLINE
from server.storage.database import Database, StorageSettings
from server.ui.app import setup_ui, ui_middleware

CONFIG: web.AppKey[ServerConfig] = web.AppKey("config", ServerConfig)

log = structlog.get_logger("server.app")
#: Past the stop deadline, how long the writer may take to finish the groups it holds.
WRITER_CLOSE_FLOOR_S = 1.0

API_TITLE = "Local Telemetry API"
API_DESCRIPTION = (
    "The central Local Telemetry server (API guide v3.0.0): create, update and query runs. "
    "Sidecars forward through `POST /api/v1/runs/batch?mode=upsert`."
)


def openapi_document() -> dict[str, Any]:
    """The document the server serves at /openapi.json."""
    return build_openapi(title=API_TITLE, version=__version__, description=API_DESCRIPTION)


def storage_settings(config: ServerConfig) -> StorageSettings:
    return StorageSettings(
        path=config.db_path,
        journal_mode=config.journal_mode,
        synchronous=config.synchronous,
        busy_timeout_ms=config.busy_timeout_ms,
        reader_threads=config.reader_threads,
        wal_restart_pages=config.wal_restart_pages,
        stale=config.stale_policy(),
        max_metrics_bytes=config.max_body_bytes,
    )


def postgres_settings(config: ServerConfig, url: DatabaseUrl) -> PostgresSettings:
    return PostgresSettings(
        url=url, stale=config.stale_policy(), max_metrics_bytes=config.max_body_bytes
    )


async def open_database(app: web.Application) -> RunStore:
    """The backend chosen once, from the validated config: PostgreSQL when
    TELEMETRY_DATABASE_URL (or a postgresql:// DATABASE_URL) is set, else SQLite."""
    config = app[CONFIG]
    url = config.postgres_url()
    if url is not None:
        return await PostgresDatabase.open(postgres_settings(config, url))
    observer = app[ops.METRICS].observe_write_group
    return await asyncio.to_thread(Database.open, storage_settings(config), on_write_group=observer)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open (and migrate) the database before serving; close it after the last request."""
    database = await open_database(app)
    app[runs.DATABASE] = database
    yield
    stop = app.get(STOP_DEADLINE)  # the stop's one deadline: the writer gets what is left
    await database.close(timeout_s=stop.remaining(WRITER_CLOSE_FLOOR_S) if stop else 10.0)
    status = database.status()
    log.info(
        "server_stopped",
        backend=status.backend,
        write_transactions=status.write_transactions,
        write_operations=status.write_operations,
        failed_write_transactions=status.failed_write_transactions,
    )


def create_app(config: ServerConfig) -> web.Application:
    """The central server as an aiohttp application."""
    middlewares: list[Middleware] = [
        error_boundary([storage_errors()]),
        admission_middleware,
    ]
    limiter: RateLimiter | SharedRateLimiter | None = None
    if config.rate_limit_enabled:
        # On PostgreSQL the replicas share each client's budget (shared_ratelimit).
        kind = RateLimiter if config.postgres_url() is None else SharedRateLimiter
        limiter = kind(config.rate_limit_rpm, max_clients=config.rate_limit_max_clients)
        middlewares.append(rate_limit_middleware(limiter))
    if config.auth_enabled and config.auth_token:
        middlewares.append(
            auth_middleware(config.auth_token, protect_reads=config.auth_protect_reads)
        )
    middlewares.append(ui_middleware)  # the dashboard's own login, headers and error pages
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=middlewares)
    app[CONFIG] = config
    if limiter is not None:
        app[RATE_LIMITER] = limiter
    app[READ_GUARD] = ReadGuard(
        config.auth_token if config.auth_enabled else None,
        protect_reads=config.auth_protect_reads,
    )
    app[ADMISSION] = Admission(config.max_inflight_requests, config.max_inflight_bytes)
    metrics = ServerMetrics()
    app[ops.METRICS] = metrics
    app[REQUEST_OBSERVER] = metrics.http.observe
    app[MAX_JSON_DEPTH] = config.max_json_depth
    app[runs.BATCH_MAX_ITEMS] = config.batch_max_items
    app[maintenance.AUTH_ENABLED] = config.auth_enabled
    app.add_routes(export.routes)  # before runs: /runs/export is not a run's event_id
    app.add_routes(heartbeat.routes)
    app.add_routes(runs.routes)
    app.add_routes(stats.routes)
    app.add_routes(maintenance.routes)
    app.add_routes(ops.routes)
    app.add_routes(docs_routes(openapi_document()))
    setup_ui(app, config)
    app.cleanup_ctx.append(database_ctx)
    if isinstance(limiter, SharedRateLimiter):
        app.cleanup_ctx.append(shared_rate_limit_ctx(limiter))
    # After the database: started once it is open, stopped before it closes.
    app.cleanup_ctx.append(reaper_ctx(runs.DATABASE, config.reaper_interval_s))
    app.cleanup_ctx.append(
        maintenance.retention_ctx(metrics, config.retention_days, config.retention_interval_s)
    )
    return app
