"""The dashboard's pages on the real app: seeded data shown, escaped, linked; strict
headers on every answer; bad parameters a 400 page; unknown runs a 404 page."""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from dashboard_seed import (
    CHILD_EVENT_ID,
    FAILING_AGENT,
    FAILING_ERROR,
    HOSTILE_EVENT_ID,
    PARENT_RUN_ID,
    RETRY_EVENT_ID,
    SILENT_AGENT,
    STALE_EVENT_ID,
    UNICODE_AGENT,
    XSS_AGENT,
    XSS_ERROR,
    XSS_JOB,
    build_fleet,
)

from server.app import create_app
from server.config import ServerConfig

HTML = "text/html"


async def seeded(client: TestClient[Any, Any]) -> None:
    fleet = build_fleet()
    for path, items in (
        ("/api/v1/runs/batch", fleet.creates),
        ("/api/v1/runs/batch?mode=upsert", fleet.upserts),
    ):
        async with client.post(path, json=items) as response:
            body = await response.json()
            assert response.status == 200, body
            assert not body["errors"], body


@pytest.fixture
async def ui(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_config: Callable[..., ServerConfig],
) -> TestClient[Any, Any]:
    client = await aiohttp_client(create_app(make_config(reaper_interval_s=86_400)))
    await seeded(client)
    return client


async def page(client: TestClient[Any, Any], path: str, status: int = 200) -> str:
    async with client.get(path, headers={"Accept": HTML}, allow_redirects=False) as response:
        text = await response.text()
        assert response.status == status, (path, response.status, text[:2000])
        assert response.content_type == HTML
        check_headers(response.headers)
        assert "Traceback" not in text
        return text


def check_headers(headers: Any) -> None:
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def no_inline_code(text: str) -> None:
    """Nothing the CSP would block, and no markup from the data: no inline script, no
    event handler or style attribute, no element named by a run."""
    parser = _Tags()
    parser.feed(text)
    for tag, attrs in parser.found:
        assert tag not in ("style", "img", "iframe", "object"), tag
        assert not any(name.startswith("on") or name == "style" for name in attrs), (tag, attrs)
        if tag == "script":
            assert attrs.get("src", "").startswith("/ui/static/"), attrs


async def test_overview_shows_the_failing_streak_stale_and_silent_agents(
    ui: TestClient[Any, Any],
) -> None:
    """The overview answers what failed, where and since when, with every number linked."""
    text = await page(ui, "/ui/")
    no_inline_code(text)
    assert FAILING_AGENT in text
    assert FAILING_ERROR.replace("<", "&lt;").replace(">", "&gt;") in text
    assert SILENT_AGENT in text
    assert STALE_EVENT_ID in text
    assert "/ui/runs?stale=true" in text
    assert re.search(r'href="/ui/runs\?[^"]*status=failure', text)


async def test_xss_names_are_text(ui: TestClient[Any, Any]) -> None:
    """A run named like markup is shown escaped everywhere it appears."""
    for path in ("/ui/", "/ui/runs", "/ui/agents", "/ui/jobs", "/ui/runs?window=7d"):
        text = await page(ui, path)
        assert "<img src=x" not in text
        assert "<script>alert" not in text
        assert "<svg onload" not in text
        no_inline_code(text)
    text = await page(ui, "/ui/runs")
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;b&gt;boom&lt;/b&gt; &amp; &#34;quotes&#34;" in text
    assert XSS_ERROR not in text


async def test_hostile_event_id_is_linked_quoted_and_its_page_opens(
    ui: TestClient[Any, Any],
) -> None:
    """An event_id holding ? % # & spaces and unicode links to its own detail page."""
    text = await page(ui, "/ui/runs")
    link = "/ui/runs/" + quote(HOSTILE_EVENT_ID, safe="")
    assert f'href="{link}"' in text.replace("&amp;", "&")
    detail = await page(ui, link)
    assert 'href="javascript' not in detail  # shown, never made a link
    assert "&lt;script&gt;alert(4)" in detail
    assert XSS_AGENT not in detail
    assert XSS_JOB not in detail


async def test_run_detail_has_timeline_links_json_and_relatives(ui: TestClient[Any, Any]) -> None:
    text = await page(ui, "/ui/runs/etl-parent-1")
    assert "Timeline" in text
    assert "Recorded by the server" in text
    assert RETRY_EVENT_ID in text  # shares its run_id
    assert CHILD_EVENT_ID in text  # its parent_run_id is this run_id
    assert PARENT_RUN_ID in text
    crawl = await page(ui, "/ui/runs/e-0000")
    assert "https://github.com/example-org/crawler/commit/0123456789abcdef" in crawl
    etl = await page(ui, "/ui/runs/e-0030")
    assert "&#34;rows&#34;: 10000" in etl  # metrics_json pretty-printed


async def test_unknown_run_is_a_404_page(ui: TestClient[Any, Any]) -> None:
    text = await page(ui, "/ui/runs/" + quote("no such ?id", safe=""), status=404)
    assert "no such ?id" in text
    await page(ui, "/ui/nowhere", status=404)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("window=1y", "window must be one of"),
        ("status=exploded", "status"),
        ("start_time_from=yesterday", "start_time_from"),
        ("limit=7", "limit must be one of"),
        ("cursor=garbage", "cursor"),
        ("stale=false", "stale"),
        ("page=0", "page must be a whole number"),
        ("page=99", "page must be at most 1"),
        ("created_after=" + "9" * 80, "created_after"),
        ("cursor=x&offset=5&agent_name=" + "a" * 300, "cursor"),
    ],
)
async def test_bad_parameters_are_a_400_page(
    ui: TestClient[Any, Any], query: str, says: str
) -> None:
    path = "/ui/" if query.startswith("window") else "/ui/runs"
    path = "/ui/agents" if query.startswith("page") else path
    text = await page(ui, f"{path}?{query}", status=400)
    assert says in text


async def test_runs_filters_and_cursor_paging(ui: TestClient[Any, Any]) -> None:
    """Filters narrow the rows; the next link continues the same list with no repeats."""
    text = await page(ui, f"/ui/runs?agent_name={FAILING_AGENT}&status=failure")
    assert text.count("HTTP 503 from upstream") == 4
    first = await page(ui, f"/ui/runs?agent_name={SILENT_AGENT}&limit=25")
    ids = re.findall(r'href="/ui/runs/(e-\d+)"', first)
    assert len(ids) == 25
    nxt = re.search(r'href="(/ui/runs\?[^"]*cursor=[^"]+)"', first)
    assert nxt is not None
    second = await page(ui, nxt.group(1).replace("&amp;", "&"))
    more = re.findall(r'href="/ui/runs/(e-\d+)"', second)
    assert len(more) == 25
    assert not set(ids) & set(more)
    # A time without an offset is UTC, as the form's placeholder says.
    await page(ui, "/ui/runs?start_time_from=2026-01-01T00:00")


async def test_agents_jobs_and_their_pages(ui: TestClient[Any, Any]) -> None:
    agents = await page(ui, "/ui/agents?window=7d")
    assert "silent" in agents
    assert UNICODE_AGENT in agents
    found = await page(ui, "/ui/agents?q=CRAWL")
    assert FAILING_AGENT in found
    assert "beta-etl" not in found
    agent = await page(ui, "/ui/agents/" + quote(FAILING_AGENT))
    assert "<svg" in agent
    assert "<title>" in agent
    assert "p95" in agent
    await page(ui, "/ui/agents/" + quote(UNICODE_AGENT, safe=""))
    await page(ui, "/ui/agents/" + quote(XSS_AGENT, safe=""))
    jobs = await page(ui, "/ui/jobs")
    assert "nightly-etl" in jobs
    assert 'class="spark"' in jobs
    job = await page(ui, "/ui/jobs/nightly-etl?window=7d")
    assert 'class="chart"' in job
    await page(ui, "/ui/jobs/" + quote(XSS_JOB, safe=""))
    await page(ui, "/ui/agents/nobody", status=404)
    await page(ui, "/ui/jobs/nothing", status=404)


async def test_root_redirects_browsers_only(ui: TestClient[Any, Any]) -> None:
    async with ui.get("/", headers={"Accept": HTML}, allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/ui/"
    async with ui.get("/", headers={"Accept": "application/json"}) as response:
        assert response.status == 404
        assert response.content_type == "application/json"
    async with ui.post("/", headers={"Accept": HTML}) as response:
        assert response.status == 404


async def test_static_files_carry_the_headers(ui: TestClient[Any, Any]) -> None:
    for name, kind in (("dashboard.css", "text/css"), ("dashboard.js", "javascript")):
        async with ui.get(f"/ui/static/{name}") as response:
            assert response.status == 200
            assert kind in response.content_type
            check_headers(response.headers)
    async with ui.get("/ui/static/../templates/base.html") as response:
        assert response.status in (403, 404)


def test_every_template_and_static_file_ships_in_the_wheel() -> None:
    """pyproject's package-data covers every file the dashboard reads at run time."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["server.ui"]
    package = root / "server" / "ui"
    files = [
        p.relative_to(package).as_posix()
        for d in ("templates", "static")
        for p in (package / d).iterdir()
    ]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


_PARAMS = ("window", "agent_name", "job_type", "status", "start_time_from", "start_time_to",
           "created_after", "created_before", "stale", "limit", "cursor", "page", "q", "offset")  # fmt: skip
_VALUES = ("24h", "7d", "1y", "", " ", "true", "TRUE", "50", "7", "-1", "0", "99999999999999999999",
           "failure", "failed", "2026-06-01T00:00Z", "2026-06-01T00:00", "2026-02-30T00:00Z",
           "\x00", "%00", "é🚀", "<script>", "a" * 600, "../../etc/passwd", "1e3", "NaN")  # fmt: skip


async def test_any_query_string_is_a_page_or_a_400_never_a_500(ui: TestClient[Any, Any]) -> None:
    """Random combinations of every parameter, hostile values included (300 requests)."""
    rng = random.Random(12)
    paths = ("/ui/", "/ui/runs", "/ui/agents", "/ui/jobs", "/ui/jobs/crawl", "/ui/agents/beta-etl")
    for _ in range(300):
        path = rng.choice(paths)
        params = [(rng.choice(_PARAMS), rng.choice(_VALUES)) for _ in range(rng.randint(0, 4))]
        async with ui.get(path, params=params, headers={"Accept": HTML}) as response:
            text = await response.text()
            assert response.status in (200, 400), (path, params, response.status, text[:500])
            assert "Traceback" not in text
            check_headers(response.headers)


@pytest.mark.parametrize("path", ["/ui/", "/ui/?window=7d", "/ui/agents", "/ui/jobs"])
async def test_every_number_links_to_the_runs_behind_it(
    ui: TestClient[Any, Any], path: str
) -> None:
    text = await page(ui, path)
    cells = re.findall(r'<td class="num"[^>]*>(.*?)</td>', text, flags=re.S)
    tiles = re.findall(r'<li class="tile[^"]*">(.*?)</li>', text, flags=re.S)
    assert cells or tiles
    for cell in cells + tiles:
        if cell.strip() in ("", "—"):
            continue
        assert cell.lstrip().startswith('<a href="/ui/runs'), cell
