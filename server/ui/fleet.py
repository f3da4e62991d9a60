"""The agents and job types: lists with their activity over the window, and a page
each with its duration chart and runs-per-hour sparkline."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.contract.fields import CANONICAL_STATUSES
from server.contract.models import RunQuery
from server.contract.stats import StatsQuery
from server.http.runs import DATABASE
from server.storage.dashboard import DashboardReads
from server.storage.stale import now_utc
from server.storage.stats import TooManyGroups
from server.ui import agent_stats, queries
from server.ui.charts import sparkline
from server.ui.format import query as query_string
from server.ui.render import (
    chart,
    chart_days,
    hour_keys,
    name_of,
    page_number,
    read,
    render,
    window_of,
)
from server.ui.window import (
    DEFAULT_WINDOW,
    RHYTHM_LOOKBACK,
    BadParameter,
    Window,
)

routes = web.RouteTableDef()
#: Newest runs an agent's or a job type's page lists.
RECENT_RUNS = 20


# ---- agents and job types --------------------------------------------------------------


#: Agents listed per page of /ui/agents (a fleet has thousands: the page stays small).
AGENTS_PER_PAGE = 100


@routes.get("/ui/agents")
async def agents_page(request: web.Request) -> web.Response:
    now = now_utc()
    window = window_of(request, now)
    number = page_number(request)
    needle = request.query.get("q", "").strip()
    metadata = await request.app[DATABASE].read_metadata()
    matching = [name for name in metadata.agent_names if needle.casefold() in name.casefold()]
    pages = max(1, -(-len(matching) // AGENTS_PER_PAGE))
    if number > pages:
        raise BadParameter(f"page must be at most {pages} (the last page of agents)")
    agents = matching[(number - 1) * AGENTS_PER_PAGE : number * AGENTS_PER_PAGE]
    rhythm_since = window.ago(RHYTHM_LOOKBACK)

    async def fetch(reads: DashboardReads) -> dict[str, Any]:
        activity = await reads.agent_activity(agents, window.start)
        rhythm = (
            await reads.agent_activity(agents, rhythm_since)
            if window.span != RHYTHM_LOOKBACK
            else activity
        )
        found = await agent_stats.silent_fleet(reads, agents, rhythm, rhythm_since, now)
        return {
            "activity": activity,
            "seen": await reads.last_seen("agent_name", agents),
            "silent": {agent.name: agent for agent in found},
        }

    data = await read(request, ("ui-agents", window.name), fetch, now)
    silent = data["silent"]
    keep = {"window": window.name, "q": needle or None}
    return render(
        request,
        "agents.html",
        {
            "now": now,
            "window": window,
            "agents": agents,
            "matching": len(matching),
            "needle": needle,
            "page": number,
            "pages": pages,
            "previous_link": "/ui/agents" + query_string({**keep, "page": number - 1})
            if number > 1
            else None,
            "next_link": "/ui/agents" + query_string({**keep, "page": number + 1})
            if number < pages
            else None,
            "activity": data["activity"],
            "seen": data["seen"],
            "silent": silent,
        },
    )


@routes.get("/ui/agents/{name}")
async def agent_page(request: web.Request) -> web.Response:
    now = now_utc()
    window = window_of(request, now)
    name = name_of(request, "name", "agent")
    since, days = chart_days(now)

    async def fetch(reads: DashboardReads) -> dict[str, Any]:
        seen = await reads.last_seen("agent_name", [name])
        if name not in seen:
            return {}
        jobs = StatsQuery(group_by=["job_type"], agent_name=name, created_after=window.start)
        return {
            "seen": seen[name],
            "activity": (await reads.agent_activity([name], window.start)).get(name),
            "days": await queries.daily_durations(reads, since, window.end, agent_name=name),
            "hours": await queries.hourly_counts(reads, window.start, window.end, agent_name=name),
            "jobs": await reads.stats(jobs, agent_index=True),
            "failing": await reads.failing_now(window.start, agent_name=name),
            "recent": (await reads.runs(RunQuery(agent_name=name, limit=RECENT_RUNS))).runs,
        }

    data = await read(request, ("ui-agent", window.name), fetch, now)
    if not data:
        raise web.HTTPNotFound(reason=f"No run names the agent {name!r}")
    return render(
        request,
        "agent.html",
        {
            **data,
            **_charts(data, window, days, f"{name}'s runs", f"{name}: runs per hour"),
            "now": now,
            "window": window,
            "name": name,
        },
    )


def _charts(
    data: dict[str, Any], window: Window, days: list[str], runs: str, per_hour: str
) -> dict[str, Any]:
    """The duration chart and the runs-per-hour sparkline of an agent's or a job's page."""
    hours = hour_keys(window)
    return {
        "chart": chart(days, data["days"], f"Duration of {runs} per day, p50 and p95"),
        "spark": sparkline([data["hours"].get((hour,), 0) for hour in hours], per_hour),
        "statuses": CANONICAL_STATUSES,
    }


@routes.get("/ui/jobs")
async def jobs_page(request: web.Request) -> web.Response:
    now = now_utc()
    window = window_of(request, now)
    job_types = (await request.app[DATABASE].read_metadata()).job_types
    # The list's sparklines cover the last 24 h whatever the window: 168 hours of every
    # job type were 100 ms of rollup cells at 1M runs (a job's own page draws its window).
    spark = Window(DEFAULT_WINDOW, now)

    async def fetch(reads: DashboardReads) -> dict[str, Any]:
        try:
            hourly: dict[tuple[str, ...], int] | None = await queries.hourly_counts(
                reads, spark.start, spark.end, by_job=True
            )
        except TooManyGroups:  # hundreds of job types over 7 days: no sparklines
            hourly = None
        summaries = await queries.job_summaries(reads, window.start, window.end)
        return {
            "summaries": {group["key"]["job_type"]: group for group in summaries},
            "seen": await reads.last_seen("job_type", job_types),
            "hourly": hourly,
        }

    data = await read(request, ("ui-jobs", window.name), fetch, now)
    hours = hour_keys(spark)
    sparks = {}
    if data["hourly"] is not None:
        for job in job_types:
            sparks[job] = sparkline(
                [data["hourly"].get((hour, job), 0) for hour in hours], f"{job}: runs per hour"
            )
    return render(
        request,
        "jobs.html",
        {
            "now": now,
            "window": window,
            "job_types": job_types,
            "summaries": data["summaries"],
            "seen": data["seen"],
            "sparks": sparks,
            "window_filter": {"start_time_from": window.start, "start_time_to": window.end},
        },
    )


@routes.get("/ui/jobs/{job_type}")
async def job_page(request: web.Request) -> web.Response:
    now = now_utc()
    window = window_of(request, now)
    job = name_of(request, "job_type", "job type")
    since, days = chart_days(now)

    async def fetch(reads: DashboardReads) -> dict[str, Any]:
        seen = await reads.last_seen("job_type", [job])
        if job not in seen:
            return {}
        summary = await queries.job_summaries(reads, window.start, window.end, job_type=job)
        stale_total, stale_runs = await queries.stale_summary(reads, job_type=job)
        return {
            "seen": seen[job],
            "summary": summary[0] if summary else None,
            "days": await queries.daily_durations(reads, since, window.end, job_type=job),
            "hours": await queries.hourly_counts(reads, window.start, window.end, job_type=job),
            "failing": await reads.failing_now(window.start, job_type=job),
            "failures": await queries.last_failures(reads, window.start, job_type=job),
            "stale_total": stale_total,
            "stale_runs": stale_runs,
            "recent": (await reads.runs(RunQuery(job_type=job, limit=RECENT_RUNS))).runs,
        }

    data = await read(request, ("ui-job", window.name), fetch, now)
    if not data:
        raise web.HTTPNotFound(reason=f"No run has the job type {job!r}")
    return render(
        request,
        "job.html",
        {
            **data,
            **_charts(data, window, days, f"{job} runs", f"{job}: runs per hour"),
            "now": now,
            "window": window,
            "job": job,
            "window_filter": {"start_time_from": window.start, "start_time_to": window.end},
        },
    )
