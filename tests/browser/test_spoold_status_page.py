"""spoold's status page in a real browser, against a real spoold and a real server.

spoold starts with its server down: writes queue, and updates for runs nobody knows
(one with a hostile event id) wait with them. The server comes up and drains them,
refusing those updates for real (dead letters), then goes away again while more writes
queue. The page must show all of it - queue, rates, the upstream down, the dead letters
with the hostile id as text - at 1440 and 360 px; then, with the server back, the page
(auto-refreshing) shows the queue drained and the upstream reachable.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from browser_harness import Browser
from daemons import Daemon, free_port, running_server, start

pytestmark = pytest.mark.integration

HOSTILE = "<img src=x onerror=alert(1)>"
SPOOLD_ENV = {
    "SPOOLD_BACKOFF_BASE_S": "0.2",
    "SPOOLD_BACKOFF_CAP_S": "1",
    "SPOOLD_SHUTDOWN_DEADLINE_S": "2",
    "SPOOLD_UPSTREAM_TIMEOUT_S": "2",
    "SPOOLD_LOOKUP_TIMEOUT_S": "1",
    "SPOOLD_MIN_FREE_DISK_MB": "0",
    "SPOOLD_MAX_SPOOL_MB": "64",
    "SPOOLD_LOG_LEVEL": "WARNING",
}


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")


def run(agent: str) -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    return {
        "event_id": event_id,
        "run_id": f"nightly-{event_id[:8]}",
        "agent_name": agent,
        "job_type": "ingest",
        "start_time": "2026-01-12T10:30:00Z",
    }


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.1) + 2):
        if predicate():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture
def spoold(tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    """A real spoold whose server (on the returned port) is not up yet; stopped by PID."""
    server_port, port = free_port(), free_port()
    args = ["serve", "--port", str(port), "--upstream", f"http://127.0.0.1:{server_port}"]
    args += ["--spool-dir", str(tmp_path / "spool")]
    daemon = start("spoold", args, port=port, workdir=tmp_path, env=SPOOLD_ENV)
    try:
        yield daemon, server_port
    finally:
        daemon.stop()


def health(daemon: Daemon) -> dict[str, Any]:
    status, body = call("GET", daemon.url + "/health")
    assert status == 200
    assert isinstance(body, dict)
    return body


def text_of(browser: Browser, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.driver.find_element(By.CSS_SELECTOR, selector).text)


def test_spoold_status_page(browser: Browser, spoold: tuple[Daemon, int], tmp_path: Path) -> None:
    """Queue, rates, upstream down then up, real dead letters with a hostile id, at 1440 and
    360 px; / leads a browser there; auto-refresh follows the drain."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    daemon, server_port = spoold
    # Server down: updates for runs nobody knows are queued (202), with valid runs.
    unknown = [HOSTILE, f"ghost-{uuid.uuid4().hex[:8]}", f"ghost-{uuid.uuid4().hex[:8]}"]
    for event_id in unknown:
        status, body = call(
            "PATCH", f"{daemon.url}/api/v1/runs/{quote(event_id, safe='')}", {"status": "failure"}
        )
        assert status == 202, body
    for n in range(12):
        assert call("POST", daemon.url + "/api/v1/runs", run(f"agent-{n % 3}"))[0] == 201

    # Server up: it gets the runs and refuses the updates (dead letters, for real).
    with running_server(tmp_path, port=server_port):

        def settled() -> bool:
            counters = health(daemon)["counters"]
            return counters["queued"] == 0 and counters["dead_lettered"] == len(unknown)

        wait_for(settled, "the server to take the runs and refuse the updates")

    # Server gone again: new writes queue behind it.
    for n in range(30):
        assert call("POST", daemon.url + "/api/v1/runs", run(f"agent-{n % 3}"))[0] == 201
    wait_for(lambda: health(daemon)["upstream"]["reachable"] is False, "the upstream to show down")

    browser.get(daemon.url + "/")  # a browser asking for / lands on the page
    assert browser.driver.current_url == daemon.url + "/ui/"
    assert browser.driver.title == "spoold status: degraded"
    assert "degraded" in text_of(browser, "#verdict")
    queue = text_of(browser, "#queue")
    assert "Queued operations\n30" in queue
    upstream = text_of(browser, "#upstream")
    assert "unreachable" in upstream
    assert f"http://127.0.0.1:{server_port}" in upstream
    assert "Last success\n20" in upstream  # it reached the server before it went away
    rates = text_of(browser, "#rates")
    assert "Accepted in total\n45" in rates
    letters = text_of(browser, "#dead-letters")
    assert "3 operations the server refused" in letters
    assert HOSTILE in letters  # shown as text...
    assert browser.driver.find_elements(By.CSS_SELECTOR, "#dead-letters img") == []  # ...only
    rows = browser.driver.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr")
    assert len(rows) == len(unknown)
    assert all("not found" in row.text.lower() for row in rows)
    overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert browser.driver.execute_script(overflow) <= 0
    browser.screenshot("spoold-status", 1440)

    browser.driver.set_window_size(360, 900)
    wide = browser.driver.execute_script(overflow)
    assert wide <= 0, f"the page is {wide} px wider than a 360 px screen"
    browser.screenshot("spoold-status-360", 360)
    browser.driver.set_window_size(1440, 1000)

    # Keyboard: Tab reaches the page's links (paging, refresh, /health) in document order.
    body = browser.driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    focused = browser.driver.switch_to.active_element
    assert focused.tag_name == "a"
    assert focused.text == "off"  # the first link: auto-refresh off (the current setting)

    # Server back: the page, refreshing itself every 5 s, shows the queue drained.
    with running_server(tmp_path, port=server_port):
        wait_for(lambda: health(daemon)["counters"]["queued"] == 0, "the queue to drain")
        browser.get(daemon.url + "/ui/?refresh=5")
        first = text_of(browser, "footer time")

        def refreshed() -> bool:
            try:
                return text_of(browser, "footer time") != first
            except Exception:  # the page is being reloaded
                return False

        wait_for(refreshed, "the page to refresh itself", timeout_s=20)
        assert "Queued operations\n0" in text_of(browser, "#queue")
        assert "reachable" in text_of(browser, "#upstream")
        assert "unreachable" not in text_of(browser, "#upstream")
        assert "Forwarded in total\n42" in text_of(browser, "#rates")
