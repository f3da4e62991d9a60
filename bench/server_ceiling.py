"""This machine's ceiling for the server's single creates and create+PATCH lifecycle: the
least a server can do for those requests on this schema, in a process of its own.

    python bench/server_ceiling.py --port 8799 --db /tmp/copy-of-prefill.sqlite

bench/server_bench.py starts it on a copy of its prefill, right after the real server's
lifecycle round, and drives it with the same loads (creates at c=32, then lifecycles at
c=32 for the same seconds), so the server's creates/s, p99 and max are quoted against it
in the same run. Its copy is given the rows the server's batch rounds stored (~41,000 at
``--rows 100000``) before it starts, so both take their creates on a table of the same
size. What it does, and nothing else:

- aiohttp, no middleware but the contract's 4xx answers, no request log, no metrics;
- the contract's validation (``RunCreate``, ``patch_changes``: the same 422s) and the
  same answers (``server.contract.answers``);
- the server's own row statements (``prepare_insert`` + ``insert_row``,
  ``update_statement`` + ``run_patch``) on the server's schema, migrated and analysed at
  open as the server does: every index the list queries need and the stats rollup
  triggers (issue 10 and the stats issue ask for both);
- the server's group commit (``server.runtime.group_commit``: one writer thread, the
  items of one loop iteration handed over together) running one plain transaction per
  group (WAL, ``synchronous=FULL``: durable before the answer), no savepoints, no hooks;
- WAL checkpoints off the commit path, by the server's ``Checkpointer`` (else SQLite's
  checkpoint inside a COMMIT would be the ceiling's own stall);
- the start-up heap frozen out of the garbage collector's passes, as the server does.

No metadata, counters, rollup deltas, size tracking, savepoints or request log: whatever the
real server's p99 has above this one is what those and its HTTP edge cost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web
from aiohttp.typedefs import Handler

from server.contract import answers
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
from server.runtime.daemon import freeze_start_up_heap
from server.runtime.event_loop import new_loop
from server.runtime.group_commit import Answer, GroupCommit, GroupWork
from server.storage import runs
from server.storage.checkpoint import JOURNAL_SIZE_LIMIT_BYTES, Checkpointer
from server.storage.connection import open_writer
from server.storage.schema import migrate

BUSY_TIMEOUT_MS = 5000
MAX_BODY_BYTES = 5 * 1024 * 1024  # the server's default body cap
Operation = Callable[[sqlite3.Connection], Any]


class PlainTransactions(GroupWork[Operation, Any]):
    """One transaction per group: BEGIN, the operations, COMMIT; nothing else."""

    def __init__(self, db: Path) -> None:
        self.conn = open_writer(
            db, journal_mode="WAL", synchronous="FULL", busy_timeout_ms=BUSY_TIMEOUT_MS
        )
        migrate(self.conn)
        self.conn.execute("PRAGMA analysis_limit = 1000")
        self.conn.execute("ANALYZE")
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")
        self.conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES:d}")
        self.checkpointer = Checkpointer(db, synchronous="FULL", busy_timeout_ms=BUSY_TIMEOUT_MS)
        self.worker: GroupCommit[Operation, Any] = GroupCommit(self, name="ceiling-writer")
        self.groups = 0

    def commit(self, group: list[Operation]) -> Sequence[Answer[Any]]:
        self.conn.execute("BEGIN IMMEDIATE")
        results = [op(self.conn) for op in group]
        self.conn.execute("COMMIT")
        self.groups += 1
        self.checkpointer.nudge()
        return [(result, None) for result in results]

    def failed(self, group: list[Operation], error: Exception) -> BaseException:
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
        return RuntimeError(f"group failed: {error}")

    def refusal(self, died: BaseException | None) -> BaseException:
        return RuntimeError(f"the writer is gone: {died}")

    def closing(self) -> BaseException:
        return RuntimeError("closing")

    def after_group(self, waiting: bool) -> None:
        if self.checkpointer.catch_up_now(idle=not waiting):
            self.checkpointer.catch_up(self.conn)

    def exited(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    async def run(self, op: Operation) -> Any:
        return await self.worker.submit(op)


WRITER = web.AppKey("writer", PlainTransactions)
routes = web.RouteTableDef()


@routes.post("/api/v1/runs")
async def create(request: web.Request) -> web.Response:
    run = parse_model(RunCreate, await read_json(request), context=json_fields_context(request))
    prepared = runs.prepare_insert(runs.insert_params(run, utc_now()))
    if await request.app[WRITER].run(lambda conn: runs.insert_row(conn, prepared)):
        return json_response(answers.created(run.event_id, run.run_id), 201)
    return json_response(answers.duplicate(run.event_id), 201)


@routes.patch("/api/v1/runs/{event_id}")
async def update(request: web.Request) -> web.Response:
    event_id, changes = await read_patch(request)
    statement = runs.update_statement(event_id, changes, utc_now(), returning=False)
    if not await request.app[WRITER].run(lambda conn: runs.run_patch(conn, statement)):
        raise not_found(event_id)
    return json_response(answers.updated(event_id, changes))


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "groups": request.app[WRITER].groups})


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:  # the contract's 4xx; no request log
        return error_response(exc)


def make_app(db: Path) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY_BYTES)
    app[MAX_JSON_DEPTH] = 32  # the server's default
    app.add_routes(routes)

    async def writer(app: web.Application) -> AsyncIterator[None]:
        work = app[WRITER] = PlainTransactions(db)
        work.checkpointer.start()
        work.worker.start()
        freeze_start_up_heap()  # as the server does once it is up
        yield
        closed = await work.worker.close()
        work.checkpointer.stop()
        if closed:  # the writer's connection closed with its thread
            work.checkpointer.close_file()

    app.cleanup_ctx.append(writer)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True, help="an existing server database")
    args = parser.parse_args(argv)
    web.run_app(
        make_app(args.db),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        loop=new_loop(os.environ.get("TELEMETRY_EVENT_LOOP", "auto")),  # the server's loop
    )


if __name__ == "__main__":
    main()
