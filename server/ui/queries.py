"""What each dashboard page shows, composed of the reads of one snapshot
(``server.storage.dashboard.DashboardReads``: the SQL is the backends' own).

Where the API's stats answer a question (runs by status, per job type), the page asks
them. A page about one agent reads its runs by created_at (when the server recorded the
run; within ``PROMPT_LAG_S`` of start_time for all but late runs), so the agents'
windows are on created_at. The fleet's agents: see ``agent_stats``.
"""

from __future__ import annotations

from typing import Any

from server.contract.fields import CANONICAL_STATUSES
from server.contract.models import RunQuery
from server.contract.stats import StatsQuery
from server.storage.dashboard import FAILED, DashboardReads

#: Rows a page lists at most in each of its small tables.
SHORT_LIST = 10


# ---- stats ---------------------------------------------------------------------------


def by_status(groups: list[dict[str, Any]]) -> dict[str, int]:
    """Runs per status, every status listed, summed over the groups."""
    counts = dict.fromkeys(CANONICAL_STATUSES, 0)
    for group in groups:
        for status, runs in group["by_status"].items():
            counts[status] = counts.get(status, 0) + runs
    return counts


def failed_count(group: dict[str, Any]) -> int:
    return sum(int(group["by_status"].get(status, 0)) for status in FAILED)


async def job_summaries(
    reads: DashboardReads, start: str, end: str, job_type: str | None = None
) -> list[dict[str, Any]]:
    """Per job type over [start, end] of start_time: runs, statuses, success rate, p50/p95."""
    query = StatsQuery(
        group_by=["job_type"], start_time_from=start, start_time_to=end, job_type=job_type
    )
    return await reads.stats(query)


async def hourly_counts(
    reads: DashboardReads,
    start: str,
    end: str,
    *,
    job_type: str | None = None,
    agent_name: str | None = None,
    by_job: bool = False,
) -> dict[tuple[str, ...], int]:
    """Runs per hour (and per job type with ``by_job``) keyed by (hour, [job]); an agent's
    by created_at (see the module's docstring), a job's by start_time."""
    group_by: list[Any] = ["hour", "job_type"] if by_job else ["hour"]
    if agent_name is not None:
        query = StatsQuery(group_by=group_by, agent_name=agent_name, created_after=start)
        groups = await reads.stats(query, agent_index=True)
    else:
        query = StatsQuery(
            group_by=group_by, job_type=job_type, start_time_from=start, start_time_to=end
        )
        groups = await reads.stats(query)
    return {tuple(group["key"][key] for key in group_by): int(group["runs"]) for group in groups}


async def daily_durations(
    reads: DashboardReads,
    since: str,
    end: str,
    *,
    job_type: str | None = None,
    agent_name: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per UTC day of start_time: the stats group (p50/p95 in ``duration_ms``)."""
    if agent_name is not None:
        query = StatsQuery(group_by=["day"], agent_name=agent_name, created_after=since)
        groups = await reads.stats(query, agent_index=True)
    else:
        query = StatsQuery(
            group_by=["day"], job_type=job_type, start_time_from=since, start_time_to=end
        )
        groups = await reads.stats(query)
    return {group["key"]["day"]: group for group in groups}


async def stale_summary(
    reads: DashboardReads, job_type: str | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """How many running runs are overdue now, and the newest of them."""
    groups = await reads.stats(StatsQuery(stale="true", job_type=job_type))
    total = sum(int(group["runs"]) for group in groups)
    page = await reads.runs(RunQuery(stale="true", job_type=job_type, limit=SHORT_LIST))
    return total, page.runs


async def last_failures(
    reads: DashboardReads, start: str, *, job_type: str | None = None
) -> list[dict[str, Any]]:
    """The newest failed runs (failure or timeout) started since ``start``."""
    found: list[dict[str, Any]] = []
    for status in FAILED:
        query = RunQuery(status=status, job_type=job_type, start_time_from=start, limit=SHORT_LIST)
        found += (await reads.runs(query)).runs
    found.sort(key=lambda run: str(run["created_at"]), reverse=True)
    return found[:SHORT_LIST]
