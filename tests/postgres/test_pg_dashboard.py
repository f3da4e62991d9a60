"""The dashboard on PostgreSQL shows what it shows on SQLite: one fleet (tests/dashboard_seed
plus hostile extras: NUL in free text, names starting with the NUL-encoding marker, ``? %
#`` in event_ids and names, ties of created_at, offsets in instants, a reaped and an
overdue run, an agent silent for a week) is written through the API into a SQLite app and
a PostgreSQL app, on one frozen clock; then every page reachable from the overview is
fetched from both and compared byte for byte (list cursors, signed with each database's
own key, masked), the cursor chains of the runs list are walked on each, and the reads
themselves (``DashboardReads``) are compared answer for answer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from dashboard_seed import (
    FAILING_AGENT,
    FAILING_JOB,
    HOSTILE_EVENT_ID,
    PARENT_RUN_ID,
    SILENT_AGENT,
    STALE_EVENT_ID,
    XSS_AGENT,
    Fleet,
    build_fleet,
    finished,
    iso,
)

from server.contract.models import RunQuery
from server.contract.stats import StatsQuery
from server.contract.timestamps import format_instant
from server.http.runs import DATABASE
from server.storage.dashboard import DashboardReads
from server.ui import agent_stats, queries

#: The fleet's clock; the server records writes (and the reaper judges) at WRITE_AT, and
#: pages are drawn at PAGE_AT, on both backends.
FLEET_AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
WRITE_AT = FLEET_AT + timedelta(seconds=30)
PAGE_AT = FLEET_AT + timedelta(minutes=1, microseconds=123_456)

MARKER_AGENT = "\uffffmarker-agent"  # starts with text.MARKER: stored encoded on PostgreSQL
MARKER_JOB = "\uffff"
META_AGENT = "q?a=1&b=%2F#frag"
META_JOB = "job%20x?#"
META_EVENT_IDS = ("ev?x=1&y=%2F#h", "ev%41%", "ev#frag", "ev\uffffmid")
NUL_EVENT_ID = "nul-bearing-run"
NUL_ERROR = "bad\x00byte <b>after NUL</b>"
TIE_AGENTS = ("tie-a", "tie-b")
TIE_JOB = "tie-job"
STOPPED_AGENT = "zeta-stopped"
REAPED_EVENT_ID = "reaped-run-1"
OVERDUE_EVENT_ID = "overdue-run-2"
#: Most pages the crawl compares (a bound, not a target: it stops when none is left).
MAX_PAGES = 400


def hostile_fleet() -> Fleet:
    """The dashboard seed's fleet and the cases only a second backend can get wrong."""
    fleet = build_fleet(FLEET_AT)
    now = fleet.now
    for hours, status in ((6, "success"), (5, "failure"), (4, "timeout")):
        fleet.add(
            agent_name=MARKER_AGENT,
            job_type=MARKER_JOB,
            run_id="\uffffrun",
            status=status,
            error_summary="\uffffstarts with the marker" if status != "success" else None,
            **finished(now - timedelta(hours=hours), 12),
        )
    for i, event_id in enumerate(META_EVENT_IDS):
        fleet.add(
            event_id=event_id,
            run_id="run?#%",
            parent_run_id=PARENT_RUN_ID if i == 0 else None,
            agent_name=META_AGENT,
            job_type=META_JOB,
            status=("failure", "success", "failure", "failure")[i],
            error_summary=f"meta {i} ?#%",
            **finished(now - timedelta(hours=7 - i), 3 + i),
        )
    fleet.add(
        event_id=NUL_EVENT_ID,
        run_id="nul-run",
        agent_name="nul-agent",
        job_type=FAILING_JOB,
        status="failure",
        error_summary=NUL_ERROR,
        error_details="trace\x00back",
        git_branch="ma\x00in",
        host="\x00",
        **finished(now - timedelta(minutes=90), 8),
    )
    # Ties: two pairs whose last failures share one created_at (and three failures of
    # one pair share it too); list and failing orders must not depend on the plan.
    tied = now - timedelta(hours=3, minutes=33)
    for agent in TIE_AGENTS:
        for n in range(3):
            fleet.add(
                event_id=f"{agent}-{n}",
                run_id=f"{agent}-run",
                agent_name=agent,
                job_type=TIE_JOB,
                status="failure" if n else "timeout",
                error_summary=f"{agent} failure {n}",
                start_time=iso(tied - timedelta(seconds=n)),
                created_at=iso(tied),
                duration_ms=1000,
            )
    # Failed, then a run still going: still failing.
    fleet.add(
        agent_name="tie-a",
        job_type="other-job",
        status="failure",
        **finished(now - timedelta(hours=9), 4),
    )
    fleet.add(
        agent_name="tie-a",
        job_type="other-job",
        status="running",
        start_time=iso(now - timedelta(hours=8)),
        created_at=iso(now - timedelta(hours=8)),
    )
    # Hourly for a day, eight days ago: judged by its rhythm before its last run.
    for hours in range(9 * 24, 8 * 24, -1):
        fleet.add(
            agent_name=STOPPED_AGENT,
            job_type="index",
            status="success",
            **finished(now - timedelta(hours=hours), 10),
        )
    # Instants written with offsets: stored (and shown) as UTC by both.
    fleet.add(
        event_id="offset-run",
        agent_name="offset-agent",
        job_type="nightly-etl",
        status="success",
        start_time="2026-06-01T15:30:00.5+05:30",
        created_at="2026-06-01T10:00:01-00:00",
        end_time="2026-06-01T00:01:00-10:00",
        duration_ms=60_500,
    )
    fleet.upserts.append(_running(REAPED_EVENT_ID, now - timedelta(hours=5)))
    return fleet


def _running(event_id: str, seen: datetime) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "seen_at": iso(seen),
        "create": {
            "event_id": event_id,
            "run_id": event_id,
            "agent_name": "delta-worker",
            "job_type": "index",
            "status": "running",
            "heartbeat_timeout_s": 120,
            "start_time": iso(seen - timedelta(minutes=1)),
            "created_at": iso(seen - timedelta(minutes=1)),
        },
    }


async def _post(client: Any, path: str, items: list[dict[str, Any]]) -> None:
    async with client.post(path, json=items) as response:
        body = await response.json()
        assert response.status == 200, body
        assert not body["errors"], body


@dataclass
class Backends:
    sqlite: Any
    postgres: Any

    def both(self) -> tuple[Any, Any]:
        return self.sqlite, self.postgres


@pytest.fixture
async def backends(make_api: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Backends:
    """The hostile fleet in a SQLite app and a PostgreSQL app, on one frozen clock: one
    run reaped (by each backend's reaper), one overdue and not yet reaped."""
    for module in ("server.storage.database", "server.postgres.database"):
        monkeypatch.setattr(f"{module}.utc_now", lambda: format_instant(WRITE_AT))
        monkeypatch.setattr(f"{module}.now_utc", lambda: WRITE_AT)
    for module in ("server.ui.pages", "server.ui.fleet", "server.ui.render"):
        monkeypatch.setattr(f"{module}.now_utc", lambda: PAGE_AT)
    fleet = hostile_fleet()
    pair = Backends(
        await make_api.sqlite(db_path=tmp_path / "reference.sqlite", reaper_interval_s=86_400),
        await make_api(reaper_interval_s=86_400),
    )
    assert pair.postgres.client.app[DATABASE].backend == "postgresql"
    for api in pair.both():
        await _post(api.client, "/api/v1/runs/batch", fleet.creates)
        await _post(api.client, "/api/v1/runs/batch?mode=upsert", fleet.upserts)
        database = api.client.app[DATABASE]
        assert await database.reap(100) == 2  # the seed's stale run and REAPED_EVENT_ID
        overdue = _running(OVERDUE_EVENT_ID, FLEET_AT - timedelta(hours=1))
        await _post(api.client, "/api/v1/runs/batch?mode=upsert", [overdue])
        await database.read_metadata()
    return pair


# ---- the pages ---------------------------------------------------------------------------

_CURSOR = re.compile(r"cursor=[A-Za-z0-9_.%-]+")
_HREF = re.compile(r'href="(/ui/[^"]*)"')


def normalised(html: str) -> str:
    """A page with what legitimately differs masked: list cursors (each database signs
    them with its own key)."""
    return _CURSOR.sub("cursor=~", html)


async def fetch(api: Any, path: str) -> tuple[int, str]:
    async with api.client.get(
        path, headers={"Accept": "text/html"}, allow_redirects=False
    ) as response:
        return response.status, await response.text()


def start_paths() -> list[str]:
    """The pages a crawl must not miss, whether or not a link reaches them."""
    agents = [FAILING_AGENT, SILENT_AGENT, XSS_AGENT, MARKER_AGENT, META_AGENT, STOPPED_AGENT]
    jobs = [FAILING_JOB, MARKER_JOB, META_JOB, TIE_JOB]
    runs = [
        HOSTILE_EVENT_ID,
        STALE_EVENT_ID,
        REAPED_EVENT_ID,
        OVERDUE_EVENT_ID,
        NUL_EVENT_ID,
        "etl-parent-1",
        "offset-run",
        *META_EVENT_IDS,
        *(f"{agent}-{n}" for agent in TIE_AGENTS for n in range(3)),
    ]
    paths = ["/ui/", "/ui/?window=7d", "/ui/agents", "/ui/agents?window=7d", "/ui/jobs"]
    paths += ["/ui/jobs?window=7d", "/ui/runs", "/ui/runs?stale=true", "/ui/agents?q=%3F"]
    for window in ("24h", "7d"):
        paths += [f"/ui/agents/{quote(a, safe='')}?window={window}" for a in agents]
        paths += [f"/ui/jobs/{quote(j, safe='')}?window={window}" for j in jobs]
    paths += [f"/ui/runs/{quote(e, safe='')}" for e in runs]
    paths += [
        "/ui/runs?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        for params in (
            {"agent_name": META_AGENT},
            {"job_type": MARKER_JOB, "status": "failed"},
            {"start_time_from": "2026-06-01T15:00", "start_time_to": "2026-06-01T11:30:00Z"},
            {"start_time_from": "2026-06-01T15:00:00+05:30", "limit": "25"},
            {"created_after": "2026-05-24T00:00:00-07:00", "created_before": "2026-06-01"},
            {"status": "timeout", "limit": "200"},
            {"stale": "true", "job_type": "index"},
        )
    ]
    # Not found, or a bad parameter: the same error pages.
    paths += ["/ui/runs/no-such-run", "/ui/agents/nobody", "/ui/jobs/none", "/ui/?window=1y"]
    paths += ["/ui/runs?limit=7", "/ui/runs?cursor=forged", "/ui/agents?page=99"]
    return paths


async def test_every_page_is_the_same_on_both_backends(backends: Backends) -> None:
    """A crawl from the overview (and the pages listed in ``start_paths``): each page
    fetched from both apps, compared after masking cursors; links followed (those with
    a cursor are walked per backend in the next test)."""
    queue, seen, differ = list(start_paths()), set(start_paths()), []
    statuses: dict[int, int] = {}
    compared = 0
    while queue and compared < MAX_PAGES:
        path = queue.pop(0)
        (lite_status, lite), (pg_status, pg) = [await fetch(api, path) for api in backends.both()]
        compared += 1
        statuses[pg_status] = statuses.get(pg_status, 0) + 1
        if (lite_status, normalised(lite)) != (pg_status, normalised(pg)):
            differ.append(_first_difference(path, lite_status, lite, pg_status, pg))
        for link in _HREF.findall(lite):
            target = unescape(link)
            crawled = "cursor=" in target or target.startswith("/ui/static/")
            if not crawled and target not in seen:
                seen.add(target)
                queue.append(target)
    assert not differ, "\n\n".join(differ[:5])
    assert compared >= 80, compared  # the crawl reached the fleet's pages
    assert set(statuses) <= {200, 400, 404}, statuses
    assert 501 not in statuses


def _first_difference(path: str, ls: int, lite: str, ps: int, pg: str) -> str:
    left, right = normalised(lite).splitlines(), normalised(pg).splitlines()
    for number, (a, b) in enumerate(zip(left, right, strict=False), start=1):
        if a != b:
            return f"{path}: line {number}\n  sqlite:     {a[:300]}\n  postgresql: {b[:300]}"
    return f"{path}: status {ls} vs {ps}, {len(left)} vs {len(right)} lines"


async def test_runs_list_pages_follow_their_own_cursors_alike(backends: Backends) -> None:
    """Page by page to the end of the list (and of a filtered list), each backend
    following its own next link: the same runs in the same order on every page."""
    for start in ("/ui/runs?limit=25", "/ui/runs?limit=25&job_type=index&status=success"):
        links = [start, start]
        pages = 0
        while links[0] is not None and pages < 50:
            texts = [
                await fetch(api, link) for api, link in zip(backends.both(), links, strict=True)
            ]
            (lite_status, lite), (pg_status, pg) = texts
            assert lite_status == pg_status == 200
            assert normalised(lite) == normalised(pg), (start, pages)
            links = [_next_link(text) for _, text in texts]
            assert (links[0] is None) == (links[1] is None)
            pages += 1
        assert pages >= 3, (start, pages)


def _next_link(html: str) -> str | None:
    found = re.search(r'<a href="(/ui/runs\?[^"]*)" rel="next">', html)
    return unescape(found[1]) if found else None


async def test_the_hostile_cases_show_as_seeded(backends: Backends) -> None:
    """What the comparison stands on: on PostgreSQL the NUL text, the marker names, the
    ``? % #`` ids, the tied failures, the reaped and the overdue runs are on the pages."""
    pg = backends.postgres
    status, run = await fetch(pg, "/ui/runs/" + quote(NUL_EVENT_ID, safe=""))
    assert status == 200
    assert "bad\x00byte &lt;b&gt;after NUL&lt;/b&gt;" in run
    for event_id in META_EVENT_IDS:
        status, page = await fetch(pg, "/ui/runs/" + quote(event_id, safe=""))
        assert status == 200
        assert f"<code>{event_id}</code>" in page or event_id in unescape(page)
    status, overview = await fetch(pg, "/ui/")
    assert status == 200
    text = unescape(overview)
    for name in (MARKER_AGENT, META_AGENT, *TIE_AGENTS, "nul-agent", XSS_AGENT):
        assert name in text, name
    assert "<img src=x" not in overview  # escaped, as on SQLite
    assert text.index("tie-a") < text.index("tie-b")  # a tie broken by name
    status, reaped = await fetch(pg, "/ui/runs/" + REAPED_EVENT_ID)
    assert "Marked timeout by the reaper" in reaped
    status, stale = await fetch(pg, "/ui/runs?stale=true")
    assert OVERDUE_EVENT_ID in stale
    assert REAPED_EVENT_ID not in stale


# ---- the reads -----------------------------------------------------------------------------

Fetch = Callable[[DashboardReads], Coroutine[Any, Any, Any]]


def _plain(value: Any) -> Any:
    """A page (its cursor's row id differs per database) as its runs and next instant."""
    if hasattr(value, "next_position") and hasattr(value, "runs"):
        position = value.next_position
        return (value.runs, None if position is None else position.created_at)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


async def everything(reads: DashboardReads) -> dict[str, Any]:
    """Each read of the protocol and each composition of the pages, over the windows."""
    answers: dict[str, Any] = {}
    agents = [
        FAILING_AGENT,
        SILENT_AGENT,
        STOPPED_AGENT,
        MARKER_AGENT,
        META_AGENT,
        XSS_AGENT,
        *TIE_AGENTS,
        "nobody",
    ]
    jobs = [FAILING_JOB, MARKER_JOB, META_JOB, TIE_JOB, "index", "nothing"]
    for days in (1, 7, 30):
        since = format_instant(PAGE_AT - timedelta(days=days))
        end = format_instant(PAGE_AT)
        answers[f"failing {days}"] = await reads.failing_now(since)
        answers[f"activity {days}"] = await reads.agent_activity(agents, since)
        answers[f"jobs {days}"] = await queries.job_summaries(reads, since, end)
        answers[f"failures {days}"] = await queries.last_failures(reads, since)
        answers[f"hourly {days}"] = await queries.hourly_counts(reads, since, end, by_job=True)
        answers[f"silent {days}"] = await agent_stats.silent_fleet(
            reads, agents, answers[f"activity {days}"], since, PAGE_AT
        )
        for agent in agents:
            answers[f"failing {days} {agent}"] = await reads.failing_now(since, agent_name=agent)
            answers[f"days {days} {agent}"] = await queries.daily_durations(
                reads, since, end, agent_name=agent
            )
            answers[f"hours {days} {agent}"] = await queries.hourly_counts(
                reads, since, end, agent_name=agent
            )
            query = StatsQuery(group_by=["job_type"], agent_name=agent, created_after=since)
            answers[f"agent jobs {days} {agent}"] = await reads.stats(query, agent_index=True)
        for job in jobs:
            answers[f"failing {days} {job}"] = await reads.failing_now(since, job_type=job)
            answers[f"days {days} {job}"] = await queries.daily_durations(
                reads, since, end, job_type=job
            )
    answers["seen agents"] = await reads.last_seen("agent_name", agents)
    answers["seen jobs"] = await reads.last_seen("job_type", jobs)
    answers["stale"] = await queries.stale_summary(reads)
    answers["stale index"] = await queries.stale_summary(reads, job_type="index")
    for query in (
        RunQuery(limit=200),
        RunQuery(agent_name=META_AGENT),
        RunQuery(job_type=MARKER_JOB, status="timeout"),
        RunQuery(stale="true"),
        RunQuery(created_after="2026-05-31T12:00:00+02:00", limit=7),
    ):
        answers[f"runs {query}"] = await reads.runs(query)
    for event_id in (
        "etl-parent-1",
        "child-load-1",
        META_EVENT_IDS[0],
        NUL_EVENT_ID,
        REAPED_EVENT_ID,
        "tie-a-1",
        "missing",
    ):
        answers[f"detail {event_id}"] = await reads.run_detail(event_id)
    return answers


async def test_the_reads_answer_alike(backends: Backends) -> None:
    lite, pg = [
        _plain(await api.client.app[DATABASE].read_dashboard(everything, PAGE_AT))
        for api in backends.both()
    ]
    assert lite.keys() == pg.keys()
    for key in lite:
        assert lite[key] == pg[key], key
    # Not vacuous: the hostile cases are in the answers.
    total, failing = lite["failing 1"]
    pairs = [(item.agent_name, item.job_type) for item in failing]
    assert (MARKER_AGENT, MARKER_JOB) in pairs
    assert pairs.index(("tie-a", TIE_JOB)) + 1 == pairs.index(("tie-b", TIE_JOB))
    assert ("tie-a", "other-job") in pairs
    assert total == len(failing)
    tie = failing[pairs.index(("tie-a", TIE_JOB))]
    assert (tie.failures, tie.by_status) == (3, {"failure": 2, "timeout": 1})
    nul = failing[pairs.index(("nul-agent", FAILING_JOB))]
    assert nul.error_summary == NUL_ERROR
    assert SILENT_AGENT in {s.name for s in lite["silent 1"]}
    assert STOPPED_AGENT in {s.name for s in lite["silent 7"]}
    assert lite["stale"][0] == 1
    detail = lite["detail etl-parent-1"]
    assert [r["event_id"] for r in detail.children] == ["child-load-1", META_EVENT_IDS[0]]
    assert lite[f"detail {REAPED_EVENT_ID}"].reaped_at == format_instant(WRITE_AT)


async def test_a_connection_cut_under_a_page_is_a_503_page_then_pages_recover(
    make_api: Any, pg_url: str
) -> None:
    """PostgreSQL ends the server's connections (a restart, a failover) while a page is
    reading: that page answers the dashboard's 503 page (never a 500, never a
    traceback), and the next pages are whole again. The page is held mid-read by a
    lock on the runs (a schema of this test's own), so the cut lands inside its read."""
    api = await make_api.sqlite(database_url=pg_url, reaper_interval_s=86_400)
    await _post(api.client, "/api/v1/runs/batch", build_fleet().creates)
    assert (await fetch(api, "/ui/"))[0] == 200
    locker = await asyncpg.connect(pg_url, timeout=10)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE agent_runs IN ACCESS EXCLUSIVE MODE")
            page = asyncio.create_task(fetch(api, "/ui/"))
            waiting = 0
            for _ in range(200):  # at most 10 s for the page's read to queue on the lock
                waiting = await locker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND application_name = 'telemetry-server'"
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, "the page never waited for the lock"
            await locker.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'telemetry-server'"
            )
        status, html = await asyncio.wait_for(page, 30)
    finally:
        await locker.close()
    assert status == 503, html[:1000]
    assert "Database busy" in html
    assert "Traceback" not in html
    answers = [(await fetch(api, "/ui/"))[0] for _ in range(3)]
    assert answers[-1] == 200, answers
