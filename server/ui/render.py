"""What every dashboard page shares: rendering with the common context, one read
transaction, the window and chart axes, path names and page numbers."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import aiohttp_jinja2
from aiohttp import web

from server.contract.fields import identifier_problem
from server.http.runs import DATABASE
from server.storage.dashboard import DashboardFetch
from server.storage.stale import now_utc
from server.ui.charts import duration_chart
from server.ui.security import SESSION
from server.ui.window import (
    CHART_DAYS,
    BadParameter,
    Window,
    parse_window,
)

T = TypeVar("T")


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    """A page with what every page shows (navigation, the session, the clock)."""
    context.setdefault("now", now_utc())
    context.setdefault("window", None)
    context["signed_in"] = request.app[SESSION].required
    # Encoded, as the browser sent it: the page's own links append a query to it (the
    # decoded path of an agent named "a?b" linked to the agent "a").
    context["path"] = request.rel_url.raw_path
    return aiohttp_jinja2.render_template(template, request, context, status=status)


async def read(request: web.Request, shape: Hashable, fetch: DashboardFetch[T], now: datetime) -> T:
    """A page's reads in one snapshot (its numbers agree), on either backend;
    ``stale`` is judged at ``now``, the page's clock."""
    return await request.app[DATABASE].read_dashboard(fetch, now, shape)


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


def page_number(request: web.Request) -> int:
    raw = request.query.get("page", "") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise BadParameter(f"page must be a whole number from 1 (got {raw[:40]!r})")
    return int(raw)
