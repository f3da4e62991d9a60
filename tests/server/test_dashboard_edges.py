"""The dashboard at its edges: malformed logins, the session at /ui, HEAD at
/, huge error summaries, and every count on the overview equal to the rows of the list
it links to (window edges, mixed failing streaks, running runs among failures)."""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import ServerConfig

HTML = {"Accept": "text/html"}
TOKEN = "review-token-0123456789"
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def _at(now: datetime, **delta: float) -> str:
    return (now - timedelta(**delta)).isoformat()


async def _client(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig], **overrides: Any
) -> TestClient[Any, Any]:
    config = make_config(reaper_interval_s=86_400, **overrides)
    return await aiohttp_client(create_app(config))


async def _seed(client: TestClient[Any, Any], runs: list[dict[str, Any]], **kw: Any) -> None:
    async with client.post("/api/v1/runs/batch", json=runs, **kw) as response:
        body = await response.json()
        assert response.status == 200, body
        assert not body["errors"], body


async def _text(client: TestClient[Any, Any], path: str, status: int = 200) -> str:
    async with client.get(path, headers=HTML, allow_redirects=False) as response:
        text = await response.text()
        assert response.status == status, (path, response.status, text[:1000])
        return text


async def _rows_behind(client: TestClient[Any, Any], href: str) -> int:
    """Rows of a runs list, every page of it followed (bounded)."""
    rows, link = 0, html.unescape(href)
    for _ in range(50):
        text = await _text(client, link)
        rows += text.count('data-label="Status"')
        found = re.search(r'<a href="([^"]+)" rel="next">', text)
        if found is None:
            return rows
        link = html.unescape(found[1])
    raise AssertionError(f"more than 50 pages behind {href}")


# ---- robustness of the login and the root ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe=\xff", "application/x-www-form-urlencoded"),
        (b"not a multipart body", "multipart/form-data; boundary=zz"),
        (b"--zz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--zz--\r\n", "multipart/form-data"),
    ],
)
async def test_a_malformed_login_form_is_a_400_page_not_a_500(
    aiohttp_client: ClientFactory,
    make_config: Callable[..., ServerConfig],
    body: bytes,
    content_type: str,
) -> None:
    client = await _client(
        aiohttp_client, make_config, auth_enabled=True, auth_token=TOKEN, auth_protect_reads=True
    )
    async with client.post(
        "/ui/login", data=body, headers={"Content-Type": content_type, **HTML}
    ) as response:
        text = await response.text()
        assert response.status == 400, (response.status, text[:500])
        assert "Set-Cookie" not in response.headers
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]


async def test_ui_without_its_slash_reaches_the_overview_when_signed_in(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig]
) -> None:
    """The session cookie's path is /ui/: a browser does not send it to /ui, which must
    not send a signed-in person back to the login page (it holds no data)."""
    client = await _client(
        aiohttp_client, make_config, auth_enabled=True, auth_token=TOKEN, auth_protect_reads=True
    )
    async with client.post("/ui/login", data={"token": TOKEN}, allow_redirects=False) as reply:
        assert reply.status == 303
    async with client.get("/ui", headers=HTML, allow_redirects=False) as response:
        assert response.status == 302, response.status
        assert response.headers["Location"] == "/ui/"
    async with client.get("/ui", headers=HTML) as response:  # followed: the overview
        assert response.status == 200
        assert "Fleet overview" in await response.text()


async def test_head_at_the_root_answers_a_browser_as_get_does(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig]
) -> None:
    client = await _client(aiohttp_client, make_config)
    for method in ("GET", "HEAD"):
        async with client.request(method, "/", headers=HTML, allow_redirects=False) as response:
            assert response.status == 302, (method, response.status)
            assert response.headers["Location"] == "/ui/"
        async with client.request(method, "/", allow_redirects=False) as response:
            assert response.status == 404, (method, response.status)
            assert response.content_type == "application/json"


# ---- huge values -----------------------------------------------------------------------


async def test_a_megabyte_error_summary_is_cut_in_lists_and_whole_on_its_own_page(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig]
) -> None:
    """Fifty runs each with a 1 MB error summary were a 50 MB runs page (and the overview
    showed each twice): lists show the start of it, the run's page all of it."""
    client = await _client(aiohttp_client, make_config)
    now = datetime.now(UTC)
    summary = "<b>E</b>" + "é" * 500_000 + "TAIL-MARK"  # 1 MB of UTF-8
    for run in [
        {
            "event_id": f"huge-{i}",
            "run_id": f"huge-{i}",
            "agent_name": "big-agent",
            "job_type": "big-job",
            "status": "failure",
            "start_time": _at(now, minutes=10 + i),
            "end_time": _at(now, minutes=9 + i),
            "error_summary": summary,
        }
        for i in range(5)
    ]:
        async with client.post("/api/v1/runs", json=run) as response:
            assert response.status == 201, await response.text()
    for path in ("/ui/", "/ui/runs", "/ui/jobs/big-job", "/ui/agents/big-agent"):
        text = await _text(client, path)
        assert len(text.encode()) < 300_000, (path, len(text))
        assert "&lt;b&gt;E&lt;/b&gt;" in text, path
        assert "TAIL-MARK" not in text, path
    text = await _text(client, "/ui/runs/huge-0")
    assert text.count("TAIL-MARK") == 1  # the alert at the top; the field table cuts it
    assert "&lt;b&gt;E&lt;/b&gt;" in text


# ---- the numbers and the rows behind them ----------------------------------------------


def _fleet(now: datetime) -> list[dict[str, Any]]:
    """Runs at the windows' edges (just in, just out), of every status, in three jobs."""
    runs: list[dict[str, Any]] = []
    offsets = (
        timedelta(minutes=1),
        timedelta(hours=23, minutes=58),
        timedelta(hours=24, minutes=2),
        timedelta(days=3),
        timedelta(days=6, hours=23, minutes=58),
        timedelta(days=7, minutes=2),
    )
    statuses = ("success", "failure", "timeout", "partial", "cancelled", "running")
    for i, offset in enumerate(offsets):
        for j, status in enumerate(statuses):
            for k, job in enumerate(("alpha job", "b&ta=1#x", "\u03b3 \u03b4+%")):
                if (i + j + k) % 3 == 0:
                    continue
                start = now - offset - timedelta(seconds=j * 3 + k)
                run: dict[str, Any] = {
                    "event_id": f"n-{i}-{j}-{k}",
                    "run_id": f"n-{i}-{j}-{k}",
                    "agent_name": f"agent {k % 2}",
                    "job_type": job,
                    "status": status,
                    "start_time": start.isoformat(),
                }
                if status != "running":
                    run["end_time"] = (start + timedelta(seconds=30 + j)).isoformat()
                runs.append(run)
    return runs


_COUNT_LINK = re.compile(
    r'<a href="(/ui/runs[^"]*)">(?:<span class="big">)?([0-9][0-9,]*)(?:</span>|</a>| )'
)


@pytest.mark.parametrize("window", ["24h", "7d"])
@pytest.mark.parametrize(
    "page", ["/ui/", "/ui/agents", "/ui/jobs", "/ui/agents/agent%200", "/ui/jobs/b%26ta%3D1%23x"]
)
async def test_every_count_on_a_page_equals_the_rows_it_links_to(
    aiohttp_client: ClientFactory,
    make_config: Callable[..., ServerConfig],
    window: str,
    page: str,
) -> None:
    client = await _client(aiohttp_client, make_config)
    await _seed(client, _fleet(datetime.now(UTC)))
    text = await _text(client, f"{page}?window={window}")
    links = _COUNT_LINK.findall(text)
    assert len(links) > 3, links
    for href, number in links:
        if "stale=true" in href:
            continue  # overdue is judged at each request's now (covered by its own test)
        assert await _rows_behind(client, href) == int(number.replace(",", "")), href


async def test_a_failing_streak_counts_the_rows_it_links_to(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig]
) -> None:
    """Failed runs since the last good one, with a run still running among them (it does
    not clear the alarm, nor is it a failure) and both failure and timeout in the streak."""
    client = await _client(aiohttp_client, make_config)
    now = datetime.now(UTC)

    def run(name: str, status: str, hours: float) -> dict[str, Any]:
        start = now - timedelta(hours=hours)
        fields = {"end_time": (start + timedelta(minutes=1)).isoformat()}
        return {
            "event_id": name,
            "run_id": name,
            "agent_name": "streaky",
            "job_type": "nightly",
            "status": status,
            "start_time": start.isoformat(),
            "created_at": start.isoformat(),  # recorded as it started
            **(fields if status != "running" else {}),
        }

    await _seed(
        client,
        [
            run("old-failure", "failure", 9),
            run("last-good", "success", 8),
            run("f1", "failure", 6),
            run("still-running", "running", 5),
            run("t1", "timeout", 4),
            run("f2", "failure", 3),
        ],
    )
    text = await _text(client, "/ui/")
    section = text[text.index('id="failing-now"') : text.index('id="last-failures"')]
    links = _COUNT_LINK.findall(section)
    assert links, section
    assert sum(int(n) for _, n in links) == 3, links
    for href, number in links:
        assert await _rows_behind(client, href) == int(number), href


# ---- relatives -------------------------------------------------------------------------


async def test_the_run_page_lists_the_runs_sharing_its_parent_run_id(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig]
) -> None:
    """Issue 12: "runs sharing its run_id or parent_run_id": its siblings too."""
    client = await _client(aiohttp_client, make_config)
    now = datetime.now(UTC)
    base = {"agent_name": "etl", "job_type": "load", "status": "running"}
    await _seed(
        client,
        [
            {**base, "event_id": "parent", "run_id": "P", "start_time": _at(now, hours=3)},
            {
                **base,
                "event_id": "kid-a",
                "run_id": "A",
                "parent_run_id": "P",
                "start_time": _at(now, hours=2),
            },
            {
                **base,
                "event_id": "kid-b",
                "run_id": "B",
                "parent_run_id": "P",
                "start_time": _at(now, hours=1),
            },
        ],
    )
    text = await _text(client, "/ui/runs/kid-a")
    assert 'href="/ui/runs/kid-b"' in text
    assert 'href="/ui/runs/parent"' in text


# ---- silent agents ---------------------------------------------------------------------


async def test_an_agent_silent_for_more_than_the_lookback_is_still_listed(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig]
) -> None:
    """An hourly agent that stopped 8 days ago has no run in the last 7 days: it was
    dropped from the silent list (the longest silence of all). Its rhythm is measured over
    the 7 days before its last run; an agent gone for more than 30 days is retired."""
    client = await _client(aiohttp_client, make_config)
    now = datetime.now(UTC)
    runs = []
    for name, stopped in (("gone-8-days", 8), ("gone-3-days", 3), ("retired-40-days", 40)):
        for hour in range(48):
            start = now - timedelta(days=stopped, hours=hour)
            runs.append(
                {
                    "event_id": f"{name}-{hour}",
                    "run_id": f"{name}-{hour}",
                    "agent_name": name,
                    "job_type": "hourly",
                    "status": "success",
                    "start_time": start.isoformat(),
                    "created_at": start.isoformat(),
                    "end_time": (start + timedelta(minutes=1)).isoformat(),
                }
            )
    await _seed(client, runs)
    for window in ("24h", "7d"):
        text = await _text(client, f"/ui/?window={window}")
        section = text[text.index('id="silent"') :]
        assert ">gone-8-days</a>" in section, window
        assert ">gone-3-days</a>" in section, window
        assert "retired-40-days" not in section, window
        links = _COUNT_LINK.findall(section)
        assert len(links) == 2, links
        for href, number in links:
            assert await _rows_behind(client, href) == int(number), href
    text = await _text(client, "/ui/agents")
    assert text.count("s-silent") == 2, text


# ---- cross-site forms ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ui/logout", "/ui/login"])
async def test_a_cross_site_form_post_is_refused(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig], path: str
) -> None:
    """SameSite=Strict keeps the cookie off a cross-site POST, but the answer's Set-Cookie
    would still sign a person out (or in): a page elsewhere must not drive the forms."""
    client = await _client(
        aiohttp_client, make_config, auth_enabled=True, auth_token=TOKEN, auth_protect_reads=True
    )
    async with client.post("/ui/login", data={"token": TOKEN}, allow_redirects=False) as reply:
        assert reply.status == 303
    for site in ("cross-site", "same-site"):
        async with client.post(
            path,
            data={"token": TOKEN},
            headers={"Sec-Fetch-Site": site, "Origin": "https://evil.example", **HTML},
            allow_redirects=False,
        ) as response:
            assert response.status == 403, (site, response.status)
            assert "Set-Cookie" not in response.headers
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    async with client.post(  # the dashboard's own form (same-origin) still works
        path,
        data={"token": TOKEN},
        headers={"Sec-Fetch-Site": "same-origin", **HTML},
        allow_redirects=False,
    ) as response:
        assert response.status == 303
        assert "Set-Cookie" in response.headers


# ---- fuzzing the routes ----------------------------------------------------------------

_ROUTES = ("/ui/runs/", "/ui/agents/", "/ui/jobs/")
_QUERY_KEYS = ("window", "agent_name", "job_type", "status", "start_time_from", "start_time_to",
               "created_after", "created_before", "stale", "limit", "cursor", "page", "q", "next")  # fmt: skip


async def test_any_path_segment_or_query_is_a_page_never_a_500(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig]
) -> None:
    """Random unicode (surrogates, controls, %-escapes, slashes) in the names of runs,
    agents and jobs and in every parameter: an HTML page with its headers, never a 500
    (400 examples, seeded)."""
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    client = await _client(aiohttp_client, make_config)
    await _seed(client, _fleet(datetime.now(UTC))[:20])
    answers: list[tuple[str, int]] = []
    text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
        ["%", "%2F", "..", ".", "%00", "\\", "//evil", "24h", "7d", "true", "50", "-1", "\u2028"]
    )

    @seed(12)
    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        route=st.sampled_from((*_ROUTES, "/ui/", "/ui/runs", "/ui/agents", "/ui/jobs")),
        segment=text,
        params=st.lists(st.tuples(st.sampled_from(_QUERY_KEYS), text), max_size=4),
    )
    def collect(route: str, segment: str, params: list[tuple[str, str]]) -> None:
        from urllib.parse import quote, urlencode

        safe = "".join(ch for ch in segment if not 0xD800 <= ord(ch) <= 0xDFFF)
        path = route + (quote(safe, safe="") if route in _ROUTES else "")
        pairs = [(k, "".join(ch for ch in v if not 0xD800 <= ord(ch) <= 0xDFFF)) for k, v in params]
        answers.append((path + ("?" + urlencode(pairs) if pairs else ""), 0))

    collect()
    assert len(answers) >= 100
    for url, _ in answers:
        async with client.get(url, headers=HTML, allow_redirects=False) as response:
            body = await response.text()
            assert response.status in (200, 400, 404), (url, response.status, body[:300])
            assert response.content_type == "text/html", url
            assert "default-src 'self'" in response.headers["Content-Security-Policy"], url
            assert "Traceback" not in body


# ---- links that carry a name -----------------------------------------------------------

_ODD_NAME = "a&b=c#d?e%25f x+y/ü"  # no "/" in a name: replaced below
ODD = _ODD_NAME.replace("/", "|")


@pytest.mark.parametrize("kind", ["agents", "jobs"])
async def test_the_window_switch_keeps_a_name_full_of_url_metacharacters(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig], kind: str
) -> None:
    """The window links were built from the decoded path: an agent named ``a?b`` linked
    to ``/ui/agents/a?b?window=7d`` (the agent ``a``)."""
    from urllib.parse import quote, unquote, urlsplit

    client = await _client(aiohttp_client, make_config)
    now = datetime.now(UTC)
    await _seed(
        client,
        [
            {
                "event_id": "odd-1",
                "run_id": "odd-1",
                "agent_name": ODD,
                "job_type": ODD,
                "status": "success",
                "start_time": _at(now, hours=1),
                "end_time": _at(now, minutes=50),
            }
        ],
    )
    base = f"/ui/{kind}/{quote(ODD, safe='')}"
    text = await _text(client, base)
    switch = re.findall(r'<a href="([^"]+)"[^>]*>7d</a>', text)
    assert switch, text[:2000]
    target = html.unescape(switch[0])
    parts = urlsplit(target)
    assert unquote(parts.path) == f"/ui/{kind}/{ODD}", target  # the same name, whole
    assert parts.query == "window=7d", target
    followed = await _text(client, target)
    assert html.escape(ODD) in followed
    assert re.search(r'aria-current="true">7d<', followed), "the 7d window is not shown"


# ---- sessions and the token -------------------------------------------------------------


async def test_a_new_token_ends_every_session(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig]
) -> None:
    """The cookie of a server started with one token opens nothing once it runs with
    another (the rotation a leaked token calls for)."""
    from server.ui.security import COOKIE

    first = await _client(
        aiohttp_client, make_config, auth_enabled=True, auth_token=TOKEN, auth_protect_reads=True
    )
    async with first.post("/ui/login", data={"token": TOKEN}, allow_redirects=False) as reply:
        assert reply.status == 303
        value = reply.cookies[COOKIE].value
    cookie = {"Cookie": f"{COOKIE}={value}", **HTML}
    async with first.get("/ui/", headers=cookie, allow_redirects=False) as response:
        assert response.status == 200
    await first.close()
    second = await _client(
        aiohttp_client,
        make_config,
        auth_enabled=True,
        auth_token=TOKEN + "-rotated",
        auth_protect_reads=True,
    )
    async with second.get("/ui/", headers=cookie, allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"].startswith("/ui/login")


def test_an_instant_with_another_offset_is_shown_in_utc() -> None:
    """Rows another writer stored with an offset (or a legacy row) are still shown in UTC,
    as the footer promises, not as their local time labelled UTC."""
    from server.ui.format import when

    assert when("2026-06-01T15:04:05+02:00") == "2026-06-01 13:04:05 UTC"
    assert when("2026-06-01T00:30:00-05:30") == "2026-06-01 06:00:00 UTC"
    assert when(datetime(2026, 6, 1, 15, 4, 5, tzinfo=UTC)) == "2026-06-01 15:04:05 UTC"
    assert when("0001-01-01T00:00:00+01:00") == "0001-01-01T00:00:00+01:00"  # no year 0


# ---- sparse databases ------------------------------------------------------------------


@pytest.mark.parametrize("contents", ["empty", "only running runs"])
async def test_every_page_of_a_sparse_database(
    aiohttp_client: ClientFactory, make_config: Callable[..., ServerConfig], contents: str
) -> None:
    client = await _client(aiohttp_client, make_config)
    paths = ["/ui/", "/ui/?window=7d", "/ui/runs", "/ui/runs?stale=true", "/ui/agents", "/ui/jobs"]
    if contents != "empty":
        now = datetime.now(UTC)
        await _seed(
            client,
            [
                {
                    "event_id": f"only-{i}",
                    "run_id": "only",
                    "parent_run_id": "only" if i else None,
                    "agent_name": "lonely",
                    "job_type": "forever",
                    "status": "running",
                    "start_time": _at(now, days=i * 3),
                    "created_at": _at(now, days=i * 3),
                }
                for i in range(3)
            ],
        )
        paths += ["/ui/runs/only-0", "/ui/runs/only-2", "/ui/agents/lonely", "/ui/jobs/forever"]
    for path in paths:
        text = await _text(client, path)
        assert "Traceback" not in text
    if contents == "empty":
        assert "No runs in the window." in await _text(client, "/ui/")
        await _text(client, "/ui/agents/lonely", status=404)


@pytest.mark.parametrize(
    "target", ["/ui/../api/v1/runs", "/ui/..//evil.example", "/ui/%2e%2e/api/v1/runs", "/ui/./."]
)
def test_after_login_no_dot_segment_leaves_the_dashboard(target: str) -> None:
    """``/ui/../x`` is the server's ``/x`` to a browser: not a dashboard path."""
    from server.ui.security import safe_next

    assert safe_next(target) == "/ui/"
