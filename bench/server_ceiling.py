"""This machine's ceiling for the server's create+PATCH lifecycle: the least a server can
do for those requests on this schema, in a process of its own.

    python bench/server_ceiling.py --port 8799 --db /tmp/copy-of-prefill.sqlite

bench/server_bench.py starts it on a copy of its prefill, right after the real server's
lifecycle round, and drives it with the same load (c=32, same seconds), so the server's
p99 and max are quoted against it in the same run. What it does, and nothing else:

- aiohttp, no middleware, no request log, no metrics;
- the contract's validation (``RunCreate``, ``patch_changes``: the same 422s);
- the server's own row statements (``prepare_insert`` + ``insert_row``,
  ``update_statement`` + ``run_patch``) on the server's schema: every index the list
  queries need and the stats rollup triggers (issue 10 and the stats issue ask for both);
- one writer thread with a plain group commit: the requests that arrive while a
  transaction runs and commits (WAL, ``synchronous=FULL``: durable before the answer)
  form the next one;
- WAL checkpoints off the commit path, by the server's ``Checkpointer`` (else SQLite's
  checkpoint inside a COMMIT would be the ceiling's own stall).

No metadata, counters, rollup deltas, size tracking or hooks: whatever the real server's
p99 has above this one is what those and its HTTP edge cost.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from server.contract.errors import ApiError
from server.contract.models import RunCreate
from server.contract.timestamps import utc_now
from server.contract.validation import parse_model
from server.edge.requests import (
    MAX_JSON_DEPTH,
    json_fields_context,
    not_found,
    read_json,
    read_patch,
)
from server.edge.responses import error_response, json_response
from server.storage import runs
from server.storage.checkpoint import JOURNAL_SIZE_LIMIT_BYTES, Checkpointer
from server.storage.connection import open_writer

BUSY_TIMEOUT_MS = 5000
Operation = Callable[[sqlite3.Connection], Any]
Pending = tuple[Operation, asyncio.Future[Any]]


class PlainGroupCommit:
    """One thread; each transaction takes every operation queued while the last one ran."""

    def __init__(self, db: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = open_writer(
            db, journal_mode="WAL", synchronous="FULL", busy_timeout_ms=BUSY_TIMEOUT_MS
        )
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")
        self.conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES:d}")
        self.checkpointer = Checkpointer(db, synchronous="FULL", busy_timeout_ms=BUSY_TIMEOUT_MS)
        self.loop = loop
        self.queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="ceiling-writer", daemon=True)
        self.groups = 0

    def start(self) -> None:
        self.checkpointer.start()
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(30)
        self.checkpointer.stop()
        self.conn.close()

    async def run(self, op: Operation) -> Any:
        future: asyncio.Future[Any] = self.loop.create_future()
        self.queue.put((op, future))
        return await future

    def _run(self) -> None:
        for _ in iter(int, 1):  # until stop() queues None
            first = self.queue.get()
            if first is None:
                return
            group = [first]
            while not self.queue.empty() and len(group) < 256:
                item = self.queue.get_nowait()
                if item is None:
                    self.queue.put(None)
                    break
                group.append(item)
            self._commit(group)
            if self.checkpointer.catch_up_now(idle=self.queue.empty()):
                self.checkpointer.catch_up(self.conn)

    def _commit(self, group: list[Pending]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            results = [(op(self.conn), None) for op, _ in group]
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            results = [(None, exc)] * len(group)
        self.groups += 1
        self.checkpointer.nudge()
        self.loop.call_soon_threadsafe(_settle, group, results)


def _settle(group: list[Pending], results: list[tuple[Any, BaseException | None]]) -> None:
    for (_, future), (value, error) in zip(group, results, strict=True):
        if future.cancelled():
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


WRITER = web.AppKey("writer", PlainGroupCommit)
routes = web.RouteTableDef()


@routes.post("/api/v1/runs")
async def create(request: web.Request) -> web.Response:
    run = parse_model(RunCreate, await read_json(request), context=json_fields_context(request))
    prepared = runs.prepare_insert(runs.insert_params(run, utc_now()))
    created = await request.app[WRITER].run(lambda conn: runs.insert_row(conn, prepared))
    status = "created" if created else "duplicate"
    return json_response({"status": status, "event_id": run.event_id, "run_id": run.run_id}, 201)


@routes.patch("/api/v1/runs/{event_id}")
async def update(request: web.Request) -> web.Response:
    event_id, changes = await read_patch(request)
    statement = runs.update_statement(event_id, changes, utc_now(), returning=False)
    if not await request.app[WRITER].run(lambda conn: runs.run_patch(conn, statement)):
        raise not_found(event_id)
    return json_response({"event_id": event_id, "updated": True, "fields_updated": list(changes)})


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "groups": request.app[WRITER].groups})


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ApiError as exc:  # the contract's 4xx; no request log
        return error_response(exc)


def make_app(db: Path) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[MAX_JSON_DEPTH] = 64
    app.add_routes(routes)

    async def writer(app: web.Application) -> Any:
        app[WRITER] = PlainGroupCommit(db, asyncio.get_running_loop())
        app[WRITER].start()
        yield
        app[WRITER].stop()

    app.cleanup_ctx.append(writer)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="only 127.0.0.1 is served")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True, help="an existing server database")
    args = parser.parse_args(argv)
    web.run_app(make_app(args.db), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
