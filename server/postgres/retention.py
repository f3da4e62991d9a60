"""Retention on PostgreSQL: SQLite's rule (``server.storage.retention``: finished runs
whose ``created_at`` and ``COALESCE(end_time, created_at)`` are both before the cut),
deleted in batches of ``BATCH_ROWS``, one transaction each, oldest first.

A batch locks its runs ``FOR UPDATE SKIP LOCKED`` and PostgreSQL re-checks the rule on
each row's latest version, so a run made ``running`` again by a concurrent PATCH is
never deleted, and a run another transaction holds is left for the next pass. The pass
rests between batches as long as a batch took, so client writes keep their share. The
background pass runs on the elected replica only (``leader``); an operator's prune
may run on any. There is no VACUUM step: autovacuum reclaims the space.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from server.postgres.errors import ACQUIRE_TIMEOUT_S, available
from server.storage.retention import PrunePlan, PruneReport, RetentionTotals

BATCH_ROWS = 200
#: Most batches in one pass (a bound: a larger backlog takes several passes).
MAX_BATCHES = 100_000

_OLD = "created_at < $1 AND COALESCE(end_time, created_at) < $1 AND status = ANY($2::text[])"
_DELETE = (
    "WITH doomed AS (SELECT id FROM agent_runs"
    f" WHERE {_OLD} ORDER BY created_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)"
    " DELETE FROM agent_runs AS a USING doomed AS d WHERE a.id = d.id"
    " RETURNING a.status, a.created_at"
)
_PREVIEW = (
    f"SELECT status, count(*), min(created_at), max(created_at) FROM agent_runs WHERE {_OLD}"
    " GROUP BY status"
)


class PostgresPruner:
    """One pass at a time per process, as ``server.storage.retention.Pruner``."""

    def __init__(
        self,
        pool: Any,
        *,
        on_change: Callable[[], None],
        on_report: Callable[[PruneReport], None] | None = None,
    ) -> None:
        self._pool = pool
        self._on_change = on_change
        self._on_report = on_report
        self._lock = asyncio.Lock()
        self.totals = RetentionTotals()

    async def run(self, plan: PrunePlan, *, dry_run: bool = False) -> PruneReport:
        async with self._lock:
            if dry_run:
                return await self._preview(plan)
            try:
                report = await self._prune(plan)
            except BaseException:
                self.totals.failed_passes += 1
                raise
            self.totals.passes += 1
            self.totals.deleted += report.deleted
            self.totals.last_pass = report.as_dict()
            if self._on_report is not None:
                self._on_report(report)
            return report

    async def _preview(self, plan: PrunePlan) -> PruneReport:
        async with available(), self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch(_PREVIEW, plan.cut, list(plan.statuses))
        report = PruneReport(plan.cut, list(plan.statuses), dry_run=True)
        for status, n, oldest, newest in rows:
            report.by_status[status] = int(n)
            report.deleted += int(n)
            report.oldest_created_at = min(filter(None, (report.oldest_created_at, oldest)))
            report.newest_created_at = max(filter(None, (report.newest_created_at, newest)))
        return report

    async def _prune(self, plan: PrunePlan) -> PruneReport:
        report = PruneReport(plan.cut, list(plan.statuses), dry_run=False)
        started = time.perf_counter()
        try:
            for _ in range(MAX_BATCHES):
                batch_started = time.perf_counter()
                async with (
                    available(),
                    self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
                    conn.transaction(),
                ):
                    rows = await conn.fetch(_DELETE, plan.cut, list(plan.statuses), BATCH_ROWS)
                took = time.perf_counter() - batch_started
                report.batches += 1
                report.max_batch_s = max(report.max_batch_s, took)
                report.max_batch_rows = max(report.max_batch_rows, len(rows))
                for status, created_at in rows:
                    report.by_status[status] = report.by_status.get(status, 0) + 1
                    report.oldest_created_at = min(
                        filter(None, (report.oldest_created_at, created_at))
                    )
                    report.newest_created_at = max(
                        filter(None, (report.newest_created_at, created_at))
                    )
                report.deleted += len(rows)
                if len(rows) < BATCH_ROWS:
                    break
                await asyncio.sleep(took)  # rest as long as the batch took
        finally:
            if report.deleted:
                self._on_change()
        report.seconds = time.perf_counter() - started
        return report
