"""The dashboard's page handlers: parse the query string, read in one snapshot, render."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp_jinja2
from aiohttp import web

from server.contract.codec import dumps
from server.contract.errors import ValidationFailed
from server.contract.fields import CANONICAL_STATUSES, identifier_problem
from server.contract.models import RunQuery
from server.contract.stats import StatsQuery
from server.contract.validation import parse_model
from server.http.runs import DATABASE, with_urls
from server.storage.cursor import InvalidCursor, Position
from server.storage.database import Database
from server.storage.runs import snapshot
from server.storage.stale import now_utc, overdue_ids_sql
from server.ui import queries
from server.ui.charts import duration_chart, sparkline
from server.ui.format import query as query_string
from server.ui.security import SESSION, safe_next
from server.ui.window import (
    CHART_DAYS,
    DEFAULT_WINDOW,
    RHYTHM_LOOKBACK,
    BadParameter,
    Window,
    parse_window,
)

T = TypeVar("T")
routes = web.RouteTableDef()

#: The list's filters the runs form offers, in form order (the API's every filter).
RUN_FILTERS = (
    "agent_name",
    "job_type",
    "status",
    "start_time_from",
    "start_time_to",
    "created_after",
    "created_before",
    "stale",
    "limit",
    "cursor",
)
_INSTANTS = ("start_time_from", "start_time_to", "created_after", "created_before")
PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
RECENT_RUNS = 20


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    """A page with what every page shows (navigation, the session, the clock)."""
    context.setdefault("now", now_utc())
    context.setdefault("window", None)
    context["signed_in"] = request.app[SESSION].required
    context["path"] = request.path
    return aiohttp_jinja2.render_template(template, request, context, status=status)


async def read(request: web.Request, shape: Hashable, fn: Callable[[sqlite3.Connection], T]) -> T:
    """fn in one read transaction (the page's numbers agree), on a reader."""
    database: Database = request.app[DATABASE]

    def in_snapshot(conn: sqlite3.Connection) -> T:
        with snapshot(conn):
            return fn(conn)

    return await database.reader.run(in_snapshot, shape=shape)


def window_of(request: web.Request, now: datetime) -> Window:
    return parse_window(request.query.get("window"), now)


def hour_keys(window: Window) -> list[str]:
    """The UTC hours the window touches, oldest first, as stats name them."""
    first = (window.now - window.span).replace(minute=0, second=0, microsecond=0)
    count = int((window.now - first).total_seconds() // 3600) + 1
    return [(first + timedelta(hours=i)).strftime("%Y-%m-%dT%H:00:00+00:00") for i in range(count)]


def chart_days(now: datetime) -> tuple[str, list[str]]:
    """The charts' first instant (a UTC midnight) and their days, oldest first."""
    first = (now - timedelta(days=CHART_DAYS - 1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    days = [(first + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(CHART_DAYS)]
    return first.isoformat(timespec="microseconds"), days


def chart(days: list[str], groups: dict[str, dict[str, Any]], title: str) -> Any:
    p50 = [groups[d]["duration_ms"]["p50"] if d in groups else None for d in days]
    p95 = [groups[d]["duration_ms"]["p95"] if d in groups else None for d in days]
    return duration_chart(days, p50, p95, title)


def name_of(request: web.Request, key: str, what: str) -> str:
    value = request.match_info[key]
    if identifier_problem(value) is not None:
        raise web.HTTPNotFound(reason=f"No such {what}")
    return value


# ---- root and login --------------------------------------------------------------------


@routes.get("/ui")
async def ui_root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


@routes.get("/ui/login")
async def login_page(request: web.Request) -> web.Response:
    target = safe_next(request.query.get("next"))
    if not request.app[SESSION].required:
        raise web.HTTPSeeOther(target)
    return render(request, "login.html", {"next": target, "error": None})


@routes.post("/ui/login")
async def login(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    form = await request.post()
    target = safe_next(str(form.get("next", "")))
    token = form.get("token")
    if not session.required:
        raise web.HTTPSeeOther(target)
    if not isinstance(token, str) or not token or not session.token_matches(token):
        context = {"next": target, "error": "That token is not the server's API token."}
        return render(request, "login.html", context, status=401)
    response = web.HTTPSeeOther(target)
    session.sign_in(request, response)
    raise response


@routes.post("/ui/logout")
async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/ui/login" if request.app[SESSION].required else "/ui/")
    request.app[SESSION].sign_out(response)
    raise response


# ---- overview --------------------------------------------------------------------------


@routes.get("/ui/")
async def overview(request: web.Request) -> web.Response:
    now = now_utc()
    window = window_of(request, now)
    database: Database = request.app[DATABASE]
    overdue = overdue_ids_sql(database.settings.stale, now)
    agents = database.metadata().agent_names
    rhythm_since = window.ago(RHYTHM_LOOKBACK)

    def fetch(conn: sqlite3.Connection) -> dict[str, Any]:
        jobs = queries.job_summaries(conn, window.start, window.end)
        stale_total, stale_runs = queries.stale_summary(conn, overdue)
        failing_total, failing = queries.failing_now(conn, window.start)
        activity = queries.agent_activity(conn, agents, rhythm_since)
        return {
            "jobs": jobs,
            "status_counts": queries.by_status(jobs),
            "stale_total": stale_total,
            "stale_runs": stale_runs,
            "failing_total": failing_total,
            "failing": failing,
            "failures": queries.last_failures(conn, window.start),
            "silent": queries.silent_agents(activity, now),
        }

    data = await read(request, ("ui-overview", window.name), fetch)
    data["total"] = sum(data["status_counts"].values())
    data["failed_jobs"] = sorted(
        (job for job in data["jobs"] if queries.failed_count(job)),
        key=queries.failed_count,
        reverse=True,
    )
    return render(
        request,
        "overview.html",
        {
            **data,
            "now": now,
            "window": window,
            "rhythm_since": rhythm_since,
            "statuses": CANONICAL_STATUSES,
            "window_filter": {"start_time_from": window.start, "start_time_to": window.end},
        },
    )


# ---- runs ------------------------------------------------------------------------------


def _instant_param(value: str) -> str:
    """A form's instant: a time without an offset (as ``datetime-local`` sends) is UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value  # the model says what is wrong with it
    return value if moment.tzinfo is not None else moment.replace(tzinfo=UTC).isoformat()


def run_query_of(request: web.Request) -> tuple[RunQuery, dict[str, str]]:
    """The runs form's query and the parameters it was given (empty ones dropped)."""
    given = {
        key: request.query[key].strip()
        for key in RUN_FILTERS
        if key in request.query and request.query[key].strip()
    }
    params = dict(given)
    for key in _INSTANTS:
        if key in params:
            params[key] = _instant_param(params[key])
    params.setdefault("limit", str(DEFAULT_PAGE_SIZE))
    if params.get("limit") not in {str(size) for size in PAGE_SIZES}:
        raise BadParameter(f"limit must be one of {', '.join(map(str, PAGE_SIZES))}")
    query = parse_model(RunQuery, params, location="query")
    return query, given


@routes.get("/ui/runs")
async def runs_list(request: web.Request) -> web.Response:
    now = now_utc()
    query, given = run_query_of(request)
    database: Database = request.app[DATABASE]
    scope = dumps(query.filters()).decode()
    after: Position | None = None
    if query.cursor is not None:
        try:
            after = database.cursors.decode(query.cursor, scope)
        except InvalidCursor as exc:
            raise BadParameter(
                f"cursor: {exc} (a cursor continues the list it came from, with its filters)"
            ) from exc
    overdue = overdue_ids_sql(database.settings.stale, now) if query.stale else None
    page = await read(
        request,
        ("ui-runs", *queries_shape(query)),
        lambda conn: queries.runs_page(conn, query, after, overdue),
    )
    filters = {key: value for key, value in given.items() if key != "cursor"}
    next_link = None
    if page.next_position is not None:
        cursor = database.cursors.encode(page.next_position, scope)
        next_link = "/ui/runs" + query_string({**filters, "cursor": cursor})
    metadata = database.metadata()
    return render(
        request,
        "runs.html",
        {
            "now": now,
            "runs": page.runs,
            "form": given,
            "first_link": "/ui/runs" + query_string(filters) if query.cursor else None,
            "next_link": next_link,
            "statuses": CANONICAL_STATUSES,
            "page_sizes": PAGE_SIZES,
            "limit": query.limit,
            "agent_names": metadata.agent_names if len(metadata.agent_names) <= 1000 else (),
            "job_types": metadata.job_types,
            "filtered": bool(filters.keys() - {"limit"}),
        },
    )


def queries_shape(query: RunQuery) -> tuple[object, ...]:
    from server.storage.runs import cost_shape

    return cost_shape(query)


@routes.get("/ui/runs/{event_id}")
async def run_page(request: web.Request) -> web.Response:
    now = now_utc()
    event_id = name_of(request, "event_id", "run")
    detail = await read(request, "ui-run", lambda conn: queries.run_detail(conn, event_id))
    if detail is None:
        raise web.HTTPNotFound(reason=f"No run has the event_id {event_id!r}")
    run = with_urls(detail.run)
    timeline = sorted(
        (
            (instant, label)
            for label, instant in (
                ("Started", run.get("start_time")),
                ("Recorded by the server", run.get("created_at")),
                ("Last updated", run.get("updated_at")),
                ("Last heard from (heartbeat or update)", run.get("last_seen_at")),
                ("Ended", run.get("end_time")),
                ("Marked timeout by the reaper", detail.reaped_at),
            )
            if instant
        ),
        key=lambda pair: str(pair[0]),
    )
    return render(
        request,
        "run.html",
        {
            "now": now,
            "run": run,
            "detail": detail,
            "timeline": timeline,
            "fields": [(key, value) for key, value in run.items() if key not in _SHOWN_APART],
        },
    )


_SHOWN_APART = frozenset({"metrics_json", "context_json", "error_details"})


# ---- agents and job types --------------------------------------------------------------


#: Agents listed per page of /ui/agents (a fleet has thousands: the page stays small).
AGENTS_PER_PAGE = 100


def page_number(request: web.Request) -> int:
    raw = request.query.get("page", "") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise BadParameter(f"page must be a whole number from 1 (got {raw[:40]!r})")
    return int(raw)


@routes.get("/ui/agents")
async def agents_page(request: web.Request) -> web.Response:
    now = now_utc()
    window = window_of(request, now)
    number = page_number(request)
    needle = request.query.get("q", "").strip()
    database: Database = request.app[DATABASE]
    matching = [
        name for name in database.metadata().agent_names if needle.casefold() in name.casefold()
    ]
    pages = max(1, -(-len(matching) // AGENTS_PER_PAGE))
    if number > pages:
        raise BadParameter(f"page must be at most {pages} (the last page of agents)")
    agents = matching[(number - 1) * AGENTS_PER_PAGE : number * AGENTS_PER_PAGE]
    rhythm_since = window.ago(RHYTHM_LOOKBACK)

    def fetch(conn: sqlite3.Connection) -> dict[str, Any]:
        return {
            "activity": queries.agent_activity(conn, agents, window.start),
            "rhythm": queries.agent_activity(conn, agents, rhythm_since)
            if window.span != RHYTHM_LOOKBACK
            else None,
            "seen": queries.last_seen(conn, "agent_name", agents),
        }

    data = await read(request, ("ui-agents", window.name), fetch)
    rhythm = data["rhythm"] if data["rhythm"] is not None else data["activity"]
    silent = {agent.name: agent for agent in queries.silent_agents(rhythm, now)}
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

    def fetch(conn: sqlite3.Connection) -> dict[str, Any]:
        seen = queries.last_seen(conn, "agent_name", [name])
        if name not in seen:
            return {}
        return {
            "seen": seen[name],
            "activity": queries.agent_activity(conn, [name], window.start).get(name),
            "days": queries.daily_durations(conn, since, window.end, agent_name=name),
            "hours": queries.hourly_counts(conn, window.start, window.end, agent_name=name),
            "jobs": queries.stats_groups(
                conn,
                StatsQuery(group_by=["job_type"], agent_name=name, created_after=window.start),
                raw_index=queries.AGENT_INDEX,
            ),
            "failing": queries.failing_now(conn, window.start, agent_name=name),
            "recent": queries.runs_page(
                conn, RunQuery(agent_name=name, limit=RECENT_RUNS), None, None
            ).runs,
        }

    data = await read(request, ("ui-agent", window.name), fetch)
    if not data:
        raise web.HTTPNotFound(reason=f"No run names the agent {name!r}")
    hours = hour_keys(window)
    return render(
        request,
        "agent.html",
        {
            **data,
            "now": now,
            "window": window,
            "name": name,
            "chart": chart(days, data["days"], f"Duration of {name}'s runs per day, p50 and p95"),
            "spark": sparkline(
                [data["hours"].get((hour,), 0) for hour in hours], f"{name}: runs per hour"
            ),
            "statuses": CANONICAL_STATUSES,
        },
    )


@routes.get("/ui/jobs")
async def jobs_page(request: web.Request) -> web.Response:
    now = now_utc()
    window = window_of(request, now)
    database: Database = request.app[DATABASE]
    job_types = database.metadata().job_types
    # The list's sparklines cover the last 24 h whatever the window: 168 hours of every
    # job type were 100 ms of rollup cells at 1M runs (a job's own page draws its window).
    spark = Window(DEFAULT_WINDOW, now)

    def fetch(conn: sqlite3.Connection) -> dict[str, Any]:
        try:
            hourly: dict[tuple[str, ...], int] | None = queries.hourly_counts(
                conn, spark.start, spark.end, by_job=True
            )
        except queries.TooManyGroups:  # hundreds of job types over 7 days: no sparklines
            hourly = None
        return {
            "summaries": {
                group["key"]["job_type"]: group
                for group in queries.job_summaries(conn, window.start, window.end)
            },
            "seen": queries.last_seen(conn, "job_type", job_types),
            "hourly": hourly,
        }

    data = await read(request, ("ui-jobs", window.name), fetch)
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
    database: Database = request.app[DATABASE]
    overdue = overdue_ids_sql(database.settings.stale, now)

    def fetch(conn: sqlite3.Connection) -> dict[str, Any]:
        seen = queries.last_seen(conn, "job_type", [job])
        if job not in seen:
            return {}
        summary = queries.job_summaries(conn, window.start, window.end, job_type=job)
        stale_total, stale_runs = queries.stale_summary(conn, overdue, job_type=job)
        return {
            "seen": seen[job],
            "summary": summary[0] if summary else None,
            "days": queries.daily_durations(conn, since, window.end, job_type=job),
            "hours": queries.hourly_counts(conn, window.start, window.end, job_type=job),
            "failing": queries.failing_now(conn, window.start, job_type=job),
            "failures": queries.last_failures(conn, window.start, job_type=job),
            "stale_total": stale_total,
            "stale_runs": stale_runs,
            "recent": queries.runs_page(
                conn, RunQuery(job_type=job, limit=RECENT_RUNS), None, None
            ).runs,
        }

    data = await read(request, ("ui-job", window.name), fetch)
    if not data:
        raise web.HTTPNotFound(reason=f"No run has the job type {job!r}")
    hours = hour_keys(window)
    return render(
        request,
        "job.html",
        {
            **data,
            "now": now,
            "window": window,
            "job": job,
            "chart": chart(days, data["days"], f"Duration of {job} runs per day, p50 and p95"),
            "spark": sparkline(
                [data["hours"].get((hour,), 0) for hour in hours], f"{job}: runs per hour"
            ),
            "statuses": CANONICAL_STATUSES,
            "window_filter": {"start_time_from": window.start, "start_time_to": window.end},
        },
    )


__all__ = ["ValidationFailed", "routes"]
