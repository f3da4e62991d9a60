"""The overview, the runs list and a run's page: parse the query string, read in one
snapshot, render."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server.contract.codec import dumps
from server.contract.fields import CANONICAL_STATUSES
from server.contract.models import RunQuery
from server.contract.run_record import with_urls
from server.contract.validation import parse_model
from server.http.runs import DATABASE
from server.storage.cursor import InvalidCursor, Position
from server.storage.dashboard import DashboardReads, RunDetail
from server.storage.runs import Page, cost_shape
from server.storage.stale import now_utc
from server.ui import agent_stats, queries
from server.ui.format import query as query_string
from server.ui.render import name_of, read, render, window_of
from server.ui.window import RHYTHM_LOOKBACK, BadParameter

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


# ---- overview --------------------------------------------------------------------------


@routes.get("/ui/")
async def overview(request: web.Request) -> web.Response:
    now = now_utc()
    window = window_of(request, now)
    agents = (await request.app[DATABASE].read_metadata()).agent_names
    rhythm_since = window.ago(RHYTHM_LOOKBACK)

    async def fetch(reads: DashboardReads) -> dict[str, Any]:
        jobs = await queries.job_summaries(reads, window.start, window.end)
        stale_total, stale_runs = await queries.stale_summary(reads)
        failing_total, failing = await reads.failing_now(window.start)
        activity = await reads.agent_activity(agents, rhythm_since)
        return {
            "jobs": jobs,
            "status_counts": queries.by_status(jobs),
            "stale_total": stale_total,
            "stale_runs": stale_runs,
            "failing_total": failing_total,
            "failing": failing,
            "failures": await queries.last_failures(reads, window.start),
            "silent": await agent_stats.silent_fleet(reads, agents, activity, rhythm_since, now),
        }

    data = await read(request, ("ui-overview", window.name), fetch, now)
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
    database = request.app[DATABASE]
    scope = dumps(query.filters()).decode()
    after: Position | None = None
    if query.cursor is not None:
        try:
            after = database.cursors.decode(query.cursor, scope)
        except InvalidCursor as exc:
            raise BadParameter(
                f"cursor: {exc} (a cursor continues the list it came from, with its filters)"
            ) from exc

    async def fetch(reads: DashboardReads) -> Page:
        return await reads.runs(query, after)

    page = await read(request, ("ui-runs", *cost_shape(query)), fetch, now)
    filters = {key: value for key, value in given.items() if key != "cursor"}
    next_link = None
    if page.next_position is not None:
        cursor = database.cursors.encode(page.next_position, scope)
        next_link = "/ui/runs" + query_string({**filters, "cursor": cursor})
    metadata = await database.read_metadata()
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


@routes.get("/ui/runs/{event_id}")
async def run_page(request: web.Request) -> web.Response:
    now = now_utc()
    event_id = name_of(request, "event_id", "run")

    async def fetch(reads: DashboardReads) -> RunDetail | None:
        return await reads.run_detail(event_id)

    detail = await read(request, "ui-run", fetch, now)
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
