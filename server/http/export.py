"""``GET /api/v1/runs/export``: every run the list's filters match, streamed.

Registered before ``/api/v1/runs/{event_id}``: aiohttp tries routes in order,
so ``export`` is this endpoint, never a run's event_id (a run whose event_id is
literally ``export`` stays readable through the list and its own PATCH).

The export reads on a connection and transaction of its own (see
``storage.export``); chunks are produced on a worker thread one at a time and
written with the response's back-pressure, so memory stays one chunk however
large the result and however slow the client. When the client goes away, the
next write fails and the transaction and connection are released at once.
"""

from __future__ import annotations

import asyncio
from typing import Literal, Protocol

import structlog
from aiohttp import web

from server.contract.errors import ValidationFailed
from server.contract.export import PAGING, ExportOptions
from server.contract.models import RunQuery
from server.contract.validation import parse_model
from server.http.backend import sqlite_only
from server.http.ops import METRICS
from server.http.runs import DATABASE
from server.postgres.database import PostgresDatabase
from server.storage.connection import SQLiteError, StorageUnavailable, classify
from server.storage.export import CONTENT_TYPES, Export
from server.storage.stale import now_utc, overdue_ids_sql

log = structlog.get_logger("server.export")
#: The longest one chunk's write may wait for a client that reads nothing: an export
#: holds a read snapshot (SQLite: the WAL cannot be checkpointed past it; PostgreSQL:
#: a pooled connection and the vacuum horizon), so a client that stalls is cut off.
STALL_S = 60.0
routes = web.RouteTableDef()


def parse_export(query: dict[str, str]) -> tuple[ExportOptions, RunQuery]:
    paging = [name for name in PAGING if name in query]
    if paging:
        raise ValidationFailed(
            [
                {
                    "loc": ["query", name],
                    "msg": "an export is the whole result: it takes the list's filters, "
                    "not its paging",
                    "type": "extra_forbidden",
                }
                for name in paging
            ]
        )
    options = parse_model(ExportOptions, query, location="query")
    filters = {k: v for k, v in query.items() if k not in ExportOptions.model_fields}
    return options, parse_model(RunQuery, filters, location="query")


@routes.get("/api/v1/runs/export")
async def export_runs(request: web.Request) -> web.StreamResponse:
    params = {key: value for key, value in request.query.items() if value != ""}
    options, query = parse_export(params)
    store = request.app[DATABASE]
    if isinstance(store, PostgresDatabase):
        chunks = await store.export(query, options.format, escape_formulas=options.escape_formulas)
        return await _stream(request, chunks, options.format)
    database = sqlite_only(
        request.app, "GET /api/v1/runs/export", "walk GET /api/v1/runs with its cursor"
    )
    overdue = None if query.stale is None else overdue_ids_sql(database.settings.stale, now_utc())
    try:
        export = await asyncio.to_thread(
            Export.open,
            database.settings.path,
            query,
            options.format,
            busy_timeout_ms=database.settings.busy_timeout_ms,
            escape_formulas=options.escape_formulas,
            overdue=overdue,
        )
    except SQLiteError as exc:
        raise classify(exc) from exc
    return await _stream(request, _InThreads(export), options.format)


class _Stalled(Exception):
    """A chunk's write made no progress for ``STALL_S``."""


class Chunks(Protocol):
    """An export as the stream reads it: chunk after chunk, then closed."""

    @property
    def rows(self) -> int: ...

    async def next_chunk(self) -> bytes | None: ...

    async def close(self) -> None: ...


class _InThreads:
    """SQLite's export, whose reads block: each chunk on a worker thread."""

    def __init__(self, export: Export) -> None:
        self._export = export

    @property
    def rows(self) -> int:
        return self._export.rows

    async def next_chunk(self) -> bytes | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._export.next_chunk)

    async def close(self) -> None:
        # A chunk may still be read on its thread (awaiting it was cancelled, which does
        # not stop the thread): close interrupts it and leaves the closing to that thread.
        self._export.close()


async def _stream(
    request: web.Request, export: Chunks, fmt: Literal["ndjson", "csv"]
) -> web.StreamResponse:
    """Write the export's chunks; ``cancelled``: aiohttp cancelled the handler (the client
    left while a write waited, or the server is stopping)."""
    outcome = "cancelled"
    response = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPES[fmt],
            "Content-Disposition": f'attachment; filename="runs.{fmt}"',
            "Cache-Control": "no-store",
        }
    )
    response.enable_chunked_encoding()
    metrics = request.app[METRICS]
    metrics.exports_active.inc()
    try:
        await response.prepare(request)
        while request.method != "HEAD":  # HEAD: the headers only, no rows read
            chunk = await export.next_chunk()
            if chunk is None:
                break
            try:
                await asyncio.wait_for(response.write(chunk), STALL_S)
            except TimeoutError:
                raise _Stalled from None
        await response.write_eof()
        outcome = "complete"
    except ConnectionError:
        outcome = "client_gone"
    except _Stalled:
        outcome = "client_stalled"
        log.warning("export_client_stalled", stall_s=STALL_S, rows=export.rows)
        if request.transport is not None:
            request.transport.close()
    except (SQLiteError, StorageUnavailable) as exc:
        outcome = "storage_error"
        log.warning("export_failed", error=str(exc), rows=export.rows)
        # The headers are sent: the only honest signal left is a body cut short.
        if request.transport is not None:
            request.transport.close()
    finally:
        await export.close()
        metrics.exports_active.dec()
        metrics.exports.labels(outcome).inc()
        log.info("export_finished", format=fmt, rows=export.rows, outcome=outcome)
    return response
