"""The dashboard at 360 px with the longest values the API accepts, unbroken (no space
to wrap at): names, ids, a repository, a branch, an error summary. The page body must
not scroll sideways (tables scroll in their own box)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from browser_harness import Browser
from daemons import Daemon, running_server
from dashboard_seed import Fleet, seed_over_http

pytestmark = pytest.mark.integration

LONG_AGENT = "agent-" + "x" * 249
LONG_JOB = "job-" + "y" * 251
LONG_EVENT = "event-" + "z" * 249
LONG_RUN = "run-" + "r" * 251


@pytest.fixture(scope="module")
def server() -> Iterator[Daemon]:
    now = datetime.now(UTC)
    fleet = Fleet(now)
    start = now - timedelta(hours=2)
    for i, status in enumerate(("failure", "success", "failure")):
        fleet.add(
            event_id=LONG_EVENT if i == 0 else f"{LONG_EVENT[:-2]}-{i}",
            run_id=LONG_RUN,
            parent_run_id="p-" + "q" * 253,
            agent_name=LONG_AGENT,
            job_type=LONG_JOB,
            status=status,
            start_time=(start + timedelta(minutes=i)).isoformat(),
            created_at=(start + timedelta(minutes=i)).isoformat(),
            end_time=(start + timedelta(minutes=i, seconds=30)).isoformat(),
            error_summary="E" * 5000,
            git_repo="https://gitlab.example.com/" + "/".join(["g" * 60] * 6),
            git_branch="b" * 250,
            git_commit_hash="c" * 255,
            metrics_json={"k" * 300: "v" * 300},
        )
    with tempfile.TemporaryDirectory(prefix="ui-long-") as workdir:
        env = {"TELEMETRY_REAPER_INTERVAL_S": "86400", "TELEMETRY_API_AUTH_ENABLED": "false"}
        with running_server(Path(workdir), env=env) as daemon:
            seed_over_http(daemon.url, fleet)
            yield daemon


@pytest.mark.parametrize(
    "path",
    [
        "/ui/",
        "/ui/runs",
        "/ui/runs/" + quote(LONG_EVENT, safe=""),
        "/ui/agents",
        "/ui/agents/" + quote(LONG_AGENT, safe=""),
        "/ui/jobs",
        "/ui/jobs/" + quote(LONG_JOB, safe=""),
        "/ui/runs?agent_name=" + quote(LONG_AGENT, safe=""),
    ],
)
def test_unbroken_long_values_fit_360_px(browser: Browser, server: Daemon, path: str) -> None:
    driver = browser.driver
    driver.set_window_size(360, 800)
    try:
        browser.get(server.url + path)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path}: the page is {overflow}px wider than the window"
    finally:
        driver.set_window_size(1440, 1000)
