"""spoold's app factory: wires routes, middlewares and the lifecycles, nothing else.

Cleanup contexts, in dependency order: local storage (spool, dead letters,
runs index, repaired and counted by ``recovery.reconcile``) -> the accept thread -> the upstream HTTP session -> the drainer.
Shutdown runs them in reverse: the drainer drains until the deadline (which
starts when the listening socket closes), then the accept thread answers what
it holds, then the files are closed cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from server.http.admission import ADMISSION, Admission, admission_middleware
from server.http.docs import docs_routes
from server.http.middleware import REQUEST_OBSERVER, error_boundary
from server.http.openapi import build_openapi
from server.http.requests import MAX_JSON_DEPTH
from spoold import __version__
from spoold.accept import Acceptor
from spoold.config import SpooldConfig
from spoold.forward.drainer import Drainer
from spoold.http import health, reads, writes
from spoold.http.prometheus import SIDECAR_METRICS, SidecarMetrics
from spoold.http.state import CONFIG, SIDECAR, Sidecar
from spoold.ledger import Ledger
from spoold.recovery import reconcile
from spoold.runs_index import RunsIndex
from spoold.spool import DeadLetterStore, Spool
from spoold.upstream.client import UpstreamClient
from spoold.upstream.retry import Backoff
from spoold.upstream.status import UpstreamStatus

log = structlog.get_logger("spoold")

INDEX_FILE = "runs-index.sqlite"
DEAD_LETTER_FILE = "deadletters.sqlite"
PRUNE_EVERY_S = 60.0

_STORAGE: web.AppKey[tuple[Spool, DeadLetterStore, RunsIndex, RunsIndex, RunsIndex]] = web.AppKey(
    "spoold_storage", tuple
)
_LEDGER: web.AppKey[Ledger] = web.AppKey("spoold_ledger", Ledger)
_ACCEPTOR: web.AppKey[Acceptor] = web.AppKey("spoold_acceptor", Acceptor)
_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("spoold_session", aiohttp.ClientSession)


def _open_storage(
    config: SpooldConfig,
) -> tuple[Spool, DeadLetterStore, RunsIndex, RunsIndex, RunsIndex]:
    spool_dir = Path(config.spool_dir)
    spool = Spool(
        spool_dir,
        capacity_bytes=config.max_spool_bytes,
        min_free_disk_bytes=config.min_free_disk_bytes,
    )
    try:
        dead_letters = DeadLetterStore(spool_dir / DEAD_LETTER_FILE)
        index_path = spool_dir / INDEX_FILE
        return (
            spool,
            dead_letters,
            RunsIndex(index_path),
            RunsIndex(index_path),
            RunsIndex(index_path),
        )
    except BaseException:
        spool.close()
        raise


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    storage = await asyncio.to_thread(_open_storage, app[CONFIG])
    app[_STORAGE] = storage
    try:
        app[_LEDGER] = Ledger(await asyncio.to_thread(reconcile, storage[0], storage[2]))
    except BaseException:
        await asyncio.to_thread(_close_storage, storage)
        raise
    yield
    await asyncio.to_thread(_close_storage, storage)


def _close_storage(storage: tuple[Spool, DeadLetterStore, RunsIndex, RunsIndex, RunsIndex]) -> None:
    spool, dead_letters, *indexes = storage
    for index in indexes:
        index.close()
    dead_letters.close()
    spool.close()


async def accept_ctx(app: web.Application) -> AsyncIterator[None]:
    spool, _, accept_index, _, _ = app[_STORAGE]
    config = app[CONFIG]
    acceptor = Acceptor(
        spool,
        accept_index,
        app[_LEDGER],
        window_s=config.group_window_ms / 1000,
        max_group=config.max_group,
        on_commit=app[SIDECAR_METRICS].observe_commit,
    )
    acceptor.start()
    app[_ACCEPTOR] = acceptor
    yield
    await acceptor.close()
    log.info("accept_stopped", groups=acceptor.stats.groups, operations=acceptor.stats.operations)


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
    app[_SESSION] = session
    yield
    await session.close()


async def _prune(index: RunsIndex, retention_s: float) -> None:
    """Forget long-settled runs so the index stays bounded."""
    while True:
        await asyncio.sleep(PRUNE_EVERY_S)
        removed = await asyncio.to_thread(index.prune, keep_s=retention_s)
        if removed:
            log.info("runs_index_pruned", removed=removed)


async def drainer_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    spool, dead_letters, _, drain_index, reader_index = app[_STORAGE]
    status = UpstreamStatus(url=config.upstream_url)
    client = UpstreamClient(
        app[_SESSION],
        config.upstream_url,
        token=config.upstream_token,
        batch_timeout_s=config.upstream_timeout_s,
        lookup_timeout_s=config.lookup_timeout_s,
    )
    drainer = Drainer(
        spool,
        dead_letters,
        drain_index,
        app[_LEDGER],
        client,
        status,
        batch_size=config.batch_size,
        backoff=Backoff(base_s=config.backoff_base_s, cap_s=config.backoff_cap_s),
        on_forward=app[SIDECAR_METRICS].observe_forward,
    )
    app[SIDECAR] = Sidecar(
        config=config,
        spool=spool,
        dead_letters=dead_letters,
        acceptor=app[_ACCEPTOR],
        reader_index=reader_index,
        ledger=app[_LEDGER],
        client=client,
        upstream=status,
        drainer=drainer,
        started_at=time.monotonic(),
    )
    task = asyncio.create_task(drainer.run(), name="spoold-drainer")
    task.add_done_callback(_report_exit)
    pruner = asyncio.create_task(_prune(drain_index, config.index_retention_s), name="spoold-prune")
    log.info(
        "spoold_started",
        spool_dir=str(config.spool_dir),
        upstream=config.upstream_url,
        queued=spool.stats().depth_ops,
    )
    yield
    drainer.stop_by(config.shutdown_deadline_s)  # no-op if on_shutdown already did
    pruner.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(task, config.shutdown_deadline_s + 0.5)
    stats = spool.stats()
    log.info(
        "spoold_stopped",
        forwarded=drainer.stats.operations_forwarded,
        dead_lettered=drainer.stats.dead_lettered,
        left_in_spool=stats.depth_ops,
    )


def _report_exit(task: asyncio.Task[None]) -> None:
    """A drainer that dies is noticed, not silently lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("drainer_crashed", error=repr(task.exception()))


async def _start_drain_deadline(app: web.Application) -> None:
    """SIGTERM closed the socket: the drain deadline starts now, while in-flight requests finish."""
    sidecar = app.get(SIDECAR)
    if sidecar is not None:
        sidecar.drainer.stop_by(app[CONFIG].shutdown_deadline_s)


def create_app(config: SpooldConfig) -> web.Application:
    """The sidecar as an aiohttp application."""
    app = web.Application(
        client_max_size=config.max_body_bytes, middlewares=[error_boundary, admission_middleware]
    )
    app[CONFIG] = config
    app[ADMISSION] = Admission(config.max_inflight_requests, config.max_inflight_bytes)
    app[MAX_JSON_DEPTH] = 32
    metrics = SidecarMetrics()
    app[SIDECAR_METRICS] = metrics
    app[REQUEST_OBSERVER] = metrics.observe_request
    app.add_routes(writes.routes)
    app.add_routes(reads.routes)
    app.add_routes(health.routes)
    spec = build_openapi(
        title="spoold (Local Telemetry sidecar)",
        version=__version__,
        description=(
            "The guide's API answered on localhost: writes are durable on local disk before the "
            "answer and forwarded to the central server; reads are proxied. An update for a run "
            "neither side knows, sent while the server is unreachable, is answered 202 with "
            '"queued": true.'
        ),
    )
    app.add_routes(docs_routes(spec))
    app.cleanup_ctx.extend([storage_ctx, accept_ctx, upstream_ctx, drainer_ctx])
    app.on_shutdown.append(_start_drain_deadline)
    return app
