"""spoold's app factory: wires routes, middlewares and the lifecycles, nothing else.

Cleanup contexts, in dependency order: local storage (spool, dead letters,
runs index, each damaged file set aside by ``storage.open_storage``, then
repaired and counted by ``recovery.reconcile``) -> the accept thread -> the
upstream HTTP session -> the drainer.
Shutdown has one deadline, ``SPOOLD_SHUTDOWN_DEADLINE_S`` from SIGTERM
(``server.runtime.daemon.StopDeadline``), for all of it: in-flight requests are
answered and the drainer drains until then, concurrently; the cleanups run in
reverse and take only what is left of it (the drainer is cancelled at the
deadline, the accept thread gets at least ``ACCEPT_CLOSE_FLOOR_S`` to answer
what it holds), then the files are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from server.edge.admission import ADMISSION, Admission, admission_middleware
from server.edge.boundary import REQUEST_OBSERVER, error_boundary
from server.edge.docs import docs_routes
from server.edge.openapi import build_document
from server.edge.requests import MAX_JSON_DEPTH
from server.runtime.daemon import STOP_DEADLINE, StopDeadline
from server.runtime.tls import upstream_context
from spoold import __version__, ui
from spoold.accept.acceptor import Acceptor
from spoold.config import SpooldConfig
from spoold.forward.drainer import Drainer
from spoold.forward.presence import Presence, PresenceBeacon
from spoold.http import export, health, heartbeat, reads, writes
from spoold.http.openapi import SIDECAR_API, with_heartbeat
from spoold.http.prometheus import SIDECAR_METRICS, SidecarMetrics
from spoold.http.state import CONFIG, SIDECAR, Sidecar
from spoold.identity import load_sidecar_id
from spoold.state.ledger import Ledger
from spoold.state.recovery import reconcile
from spoold.state.runs_index import RunsIndex
from spoold.state.storage import (
    INDEX_FILE,
    Storage,
    StorageRecoveries,
    open_storage,
)
from spoold.state.verify import Deferred, lower_this_threads_priority
from spoold.upstream.client import UpstreamClient
from spoold.upstream.retry import Backoff
from spoold.upstream.status import UpstreamStatus

log = structlog.get_logger("spoold")

PRUNE_EVERY_S = 60.0
#: Not sooner, even after a pass cut short by its row bound (``PRUNE_MAX_ROWS``): each
#: pass's deletes and WAL copy share the index with the accept path. A pass every second
#: during a 1M-op drain (eb2eeba) took the accept p99 at 1,000 creates/s from ~20 ms to
#: 64-172 ms; one every 10 s to 51 ms; every 60 s, 21 ms (bench/spoold_bench.py --rows
#: 1000000). A pass forgets as many runs as the byte bound needs (up to
#: ``PRUNE_MAX_BOUND_ROWS``, above any rate spoold accepts), so a host settling runs fast
#: for long stays within SPOOLD_INDEX_MAX_MB after each pass; in between, the index may
#: pass it by a minute's settled runs (~200 bytes each once delivered).
PRUNE_STOP_WAIT_S = 1.0
#: Past the stop deadline: how long a cancelled drainer may take to give its groups back,
#: and how long the accept thread may take to answer what it holds.
DRAINER_CANCEL_GRACE_S = 1.0
#: The deferred whole-file checks start this long after start-up (``spoold.state.verify``).
CHECK_AFTER_START_DELAY_S = 2.0
ACCEPT_CLOSE_FLOOR_S = 1.0

_STORAGE: web.AppKey[Storage] = web.AppKey("spoold_storage", Storage)
_RECOVERIES: web.AppKey[StorageRecoveries] = web.AppKey("spoold_recoveries", StorageRecoveries)
_LEDGER: web.AppKey[Ledger] = web.AppKey("spoold_ledger", Ledger)
_ACCEPTOR: web.AppKey[Acceptor] = web.AppKey("spoold_acceptor", Acceptor)
_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("spoold_session", aiohttp.ClientSession)
_UPSTREAM_SSL: web.AppKey[ssl.SSLContext] = web.AppKey("spoold_upstream_ssl", ssl.SSLContext)


def _open_storage(config: SpooldConfig, deferred: Deferred) -> Storage:
    return open_storage(
        Path(config.spool_dir),
        capacity_bytes=config.max_spool_bytes,
        min_free_disk_bytes=config.min_free_disk_bytes,
        check_max_bytes=config.startup_check_max_bytes,
        deferred=deferred,
    )


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    deferred = Deferred()
    storage = await asyncio.to_thread(_open_storage, app[CONFIG], deferred)
    app[_STORAGE] = storage
    try:
        app[_LEDGER] = Ledger(
            await asyncio.to_thread(reconcile, storage.spool, storage.accept_index)
        )
        app[_RECOVERIES] = await asyncio.to_thread(StorageRecoveries.read, storage.accept_index)
    except BaseException:
        await asyncio.to_thread(storage.close)
        raise
    checks = asyncio.create_task(_check_after_start(deferred), name="spoold-checks")
    yield
    checks.cancel()
    await asyncio.to_thread(storage.close)


async def _check_after_start(deferred: Deferred) -> None:
    """The runs-index check start-up left for later (``spoold.state.verify``), once the first
    requests had the CPU to themselves for a moment."""
    if not deferred:
        return
    await asyncio.sleep(CHECK_AFTER_START_DELAY_S)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def report(error: BaseException | None) -> None:
        if not finished.done():
            if error is None:
                finished.set_result(None)
            else:
                finished.set_exception(error)

    def check() -> None:
        lower_this_threads_priority()
        error: BaseException | None = None
        try:
            deferred.run()
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: spoold is stopping
            loop.call_soon_threadsafe(report, error)

    # A daemon thread of its own (it lowers its priority), not one of a pool: the
    # interpreter's exit joins pool threads, so a stop would wait for the check (minutes
    # on a large spool at nice 19) until the hard-stop timer ended it with status 70.
    threading.Thread(target=check, name="spoold-checks", daemon=True).start()
    try:
        await finished
    except Exception as exc:  # not damage (a locked file, a closed spool): reported only
        log.warning("check_after_start_failed", error=repr(exc)[:300])


async def accept_ctx(app: web.Application) -> AsyncIterator[None]:
    storage = app[_STORAGE]
    config = app[CONFIG]
    acceptor = Acceptor(
        storage.spool,
        storage.accept_index,
        app[_LEDGER],
        window_s=config.group_window_ms / 1000,
        max_group=config.max_group,
        on_commit=app[SIDECAR_METRICS].observe_commit,
        slow_commit_s=config.slow_commit_ms / 1000,
    )
    acceptor.start()
    app[_ACCEPTOR] = acceptor
    yield
    await acceptor.close(timeout_s=_stop_deadline(app).remaining(ACCEPT_CLOSE_FLOOR_S))
    log.info("accept_stopped", groups=acceptor.stats.groups, operations=acceptor.stats.operations)


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    # https:// upstreams are verified (certificate chain and host name) with this context.
    connector = aiohttp.TCPConnector(limit=16, ssl=app[_UPSTREAM_SSL])
    session = aiohttp.ClientSession(connector=connector)
    app[_SESSION] = session
    yield
    await session.close()


async def _prune(
    index: RunsIndex, retention_s: float, max_bytes: int, queued_bytes: Callable[[], int]
) -> None:
    """Forget long-settled runs, and the oldest past the byte bound (over delivered runs:
    ``queued_bytes``, the spool's, says what the backlog's rows are allowed besides), so
    the index stays bounded. A failed pass (the index locked too long, the disk full) is
    logged and tried again at the next: the bound must not end with one error."""
    while True:
        await asyncio.sleep(PRUNE_EVERY_S)
        try:
            removed = await asyncio.to_thread(
                index.prune,
                keep_s=retention_s,
                max_bytes=max_bytes,
                backlog_bytes=queued_bytes(),
            )
        except (sqlite3.Error, OSError) as exc:
            log.warning("runs_index_prune_failed", error=repr(exc)[:300])
            continue
        if removed:
            log.info("runs_index_pruned", removed=removed)
            # Its deletes never copy the WAL inside their commits (holding the write
            # gate): it is copied here, with no gate held.
            try:
                await asyncio.to_thread(index.copy_wal)
            except Exception as exc:  # the next prune copies it; the drain's copies too
                log.warning("runs_index_checkpoint_failed", error=repr(exc)[:300])


async def drainer_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    storage = app[_STORAGE]
    spool = storage.spool
    sidecar_id = await asyncio.to_thread(load_sidecar_id, Path(config.spool_dir))
    presence = Presence(
        sidecar_id.value,
        spool,
        persisted=sidecar_id.persisted,
        accepting=app[_ACCEPTOR].oldest_pending,
    )
    backoff = Backoff(base_s=config.backoff_base_s, cap_s=config.backoff_cap_s)
    client = UpstreamClient(
        app[_SESSION],
        config.upstream_urls,
        token=config.upstream_token,
        batch_timeout_s=config.upstream_timeout_s,
        lookup_timeout_s=config.lookup_timeout_s,
        presence=presence.headers,
        backoff=backoff,
    )
    status = UpstreamStatus(url=config.upstream_url, selection=client.selection)
    drainer = Drainer(
        spool,
        storage.dead_letters,
        storage.drain_index,
        app[_LEDGER],
        client,
        status,
        batch_size=config.batch_size,
        batch_max_bytes=config.upstream_max_body_bytes,
        round_max_bytes=config.drain_round_bytes,
        backoff=backoff,
        on_forward=app[SIDECAR_METRICS].observe_forward,
        presence=presence,
    )
    app[SIDECAR] = Sidecar(
        config=config,
        spool=spool,
        dead_letters=storage.dead_letters,
        acceptor=app[_ACCEPTOR],
        reader_index=storage.reader_index,
        ledger=app[_LEDGER],
        client=client,
        upstream=status,
        drainer=drainer,
        started_at=time.monotonic(),
        recoveries=app[_RECOVERIES],
        presence=presence,
    )
    task = asyncio.create_task(drainer.run(), name="spoold-drainer")
    task.add_done_callback(_report_exit)
    # The pruner's own connection (synchronous=NORMAL: forgetting is redone after a crash),
    # never the drainer's, whose settles are fsync'd before their spool acks.
    prune_index = await asyncio.to_thread(
        RunsIndex, Path(config.spool_dir) / INDEX_FILE, yields=True
    )
    await asyncio.to_thread(prune_index.wal_autocheckpoint, 0)
    pruner = asyncio.create_task(
        _prune(
            prune_index,
            config.index_retention_s,
            config.index_max_mb * 1024 * 1024,
            spool.queued_bytes,
        ),
        name="spoold-prune",
    )
    pruner.add_done_callback(_report_prune_exit)
    log.info(
        "spoold_started",
        spool_dir=str(config.spool_dir),
        upstream=",".join(member.url for member in client.selection.members),
        queued=spool.stats().depth_ops,
    )
    yield
    pruner.cancel()
    await asyncio.wait({pruner}, timeout=PRUNE_STOP_WAIT_S)
    await asyncio.to_thread(prune_index.close)
    await _stop_drainer(drainer, task, _stop_deadline(app))
    await client.close()
    stats = spool.stats()
    log.info(
        "spoold_stopped",
        forwarded=drainer.stats.operations_forwarded,
        dead_lettered=drainer.stats.dead_lettered,
        left_in_spool=stats.depth_ops,
    )


async def presence_ctx(app: web.Application) -> AsyncIterator[None]:
    """The presence beacon (``spoold.forward.presence``), from start-up to the stop."""
    beacon = PresenceBeacon(app[SIDECAR].client, app[CONFIG].presence_interval_s)
    task = asyncio.create_task(beacon.run(), name="spoold-presence")
    task.add_done_callback(_report_exit)
    yield
    task.cancel()
    await asyncio.wait({task}, timeout=PRUNE_STOP_WAIT_S)


def _report_exit(task: asyncio.Task[None]) -> None:
    """A drainer that dies is noticed, not silently lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("drainer_crashed", error=repr(task.exception()))


def _report_prune_exit(task: asyncio.Task[None]) -> None:
    """The pruner ends only when cancelled; anything else is a bug to see in the log."""
    if not task.cancelled() and task.exception() is not None:
        log.error("runs_index_pruner_crashed", error=repr(task.exception()))


def _stop_deadline(app: web.Application) -> StopDeadline:
    """The stop's one deadline, started now if the signal did not start it already."""
    deadline = app[STOP_DEADLINE]
    deadline.start()
    return deadline


async def _stop_drainer(drainer: Drainer, task: asyncio.Task[None], deadline: StopDeadline) -> None:
    """Let the drainer finish by the deadline; past it, cancel it (what it holds stays queued)."""
    drainer.stop_by(deadline.remaining())  # the same absolute deadline, however often it is set
    done, _ = await asyncio.wait({task}, timeout=deadline.remaining())
    if done:
        return
    log.warning("drainer_cancelled_at_deadline")
    task.cancel()
    await asyncio.wait({task}, timeout=DRAINER_CANCEL_GRACE_S)


async def _start_drain_deadline(app: web.Application) -> None:
    """SIGTERM closed the socket: the drainer's deadline is the stop's, while requests finish."""
    deadline = _stop_deadline(app)
    sidecar = app.get(SIDECAR)
    if sidecar is not None:
        sidecar.drainer.stop_by(deadline.remaining())


def openapi_document() -> dict[str, Any]:
    """The document spoold serves at /openapi.json: what spoold itself answers."""
    document = build_document(
        title="spoold (Local Telemetry sidecar)",
        version=__version__,
        description=(
            "The guide's API answered on localhost: writes are durable on local disk before the "
            "answer and forwarded to the central server; reads are proxied. An update for a run "
            "neither side knows, sent while the server is unreachable, is answered 202 with "
            '"queued": true.'
        ),
        variant=SIDECAR_API,
    )
    return with_heartbeat(document)


def create_app(
    config: SpooldConfig, *, upstream_ssl: ssl.SSLContext | None = None
) -> web.Application:
    """The sidecar as an aiohttp application; upstream_ssl defaults to one built from config."""
    app = web.Application(
        client_max_size=config.max_body_bytes, middlewares=[error_boundary(), admission_middleware]
    )
    app[CONFIG] = config
    app[ADMISSION] = Admission(config.max_inflight_requests, config.max_inflight_bytes)
    app[_UPSTREAM_SSL] = upstream_ssl or upstream_context(config.upstream_ca_file)
    app[STOP_DEADLINE] = StopDeadline(config.shutdown_deadline_s)
    # The body may be as deep as the server's limit; the exact check, on the operation as
    # the server will see it (wrapped in its batch envelope), follows in the handlers.
    app[MAX_JSON_DEPTH] = config.upstream_max_json_depth
    metrics = SidecarMetrics()
    app[SIDECAR_METRICS] = metrics
    app[REQUEST_OBSERVER] = metrics.observe_request
    app.add_routes(writes.routes)
    app.add_routes(export.routes)  # before reads: /runs/export is not a run's event_id
    app.add_routes(heartbeat.routes)
    app.add_routes(reads.routes)
    app.add_routes(health.routes)
    app.add_routes(docs_routes(openapi_document()))
    app.cleanup_ctx.extend([storage_ctx, accept_ctx, upstream_ctx, drainer_ctx, presence_ctx])
    ui.install(app)  # the status page at /ui/; its rate sampler runs after the drainer's ctx
    app.on_shutdown.append(_start_drain_deadline)
    return app
