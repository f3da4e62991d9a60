"""The stale-run reaper: one task of the app's lifecycle, a pass every interval.

A pass first asks a reader whether anything is due (one indexed read: nothing else
happens while nothing is stale), then reaps through the single writer in batches of
``REAP_BATCH`` runs, one writer operation each, so ordinary writes go between two
batches and the writer is never held for long. Each batch is one statement in one
transaction: a server killed between (or during) batches leaves every run either
reaped whole or untouched, and the next pass carries on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from server.postgres.store import RunStore
from server.storage.connection import StorageUnavailable
from server.storage.stale import REAP_BATCH

log = structlog.get_logger("server.reaper")

#: Most batches in one pass: a pass ends, and the next interval starts, after this many
#: (bounds a pass; a backlog larger than this takes a few passes).
MAX_BATCHES_PER_PASS = 500
#: Longest wait for the task to end at stop.
STOP_WAIT_S = 5.0


async def reap_pass(database: RunStore, batch: int = REAP_BATCH) -> int:
    """Reap what is due now; the number of runs marked ``timeout``."""
    if not await database.reapable():
        return 0
    total = 0
    for _ in range(MAX_BATCHES_PER_PASS):
        reaped = await database.reap(batch)
        total += reaped
        if reaped < batch:
            break
        await asyncio.sleep(0)  # let waiting requests reach the writer between batches
    if total:
        log.info("runs_reaped", runs=total)
    return total


async def run_reaper(database: RunStore, interval_s: float) -> None:
    """Pass after pass until cancelled; a failed pass is logged and retried next time."""
    while True:
        try:
            if await database.lead():  # on PostgreSQL, one replica of all reaps
                await reap_pass(database)
        except StorageUnavailable as exc:
            log.warning("reaper_pass_failed", error=str(exc))
        except Exception as exc:  # never let the task die silently: log, try again later
            log.exception("reaper_pass_crashed", error=str(exc))
        raise_if_cancelled()
        await asyncio.sleep(interval_s)


def raise_if_cancelled() -> None:
    """End a task whose cancellation was swallowed on the way (Python 3.11's wait_for
    returns a result that completed as it was cancelled; asyncpg may turn one into its
    own error): its owner is waiting for it to end."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def reaper_ctx(
    database_key: web.AppKey[RunStore], interval_s: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context owning the task: started once the database is open, cancelled
    (and awaited) before it closes."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run_reaper(app[database_key], interval_s), name="reaper")
        yield
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_WAIT_S)  # bounded, whatever the task does

    return ctx
