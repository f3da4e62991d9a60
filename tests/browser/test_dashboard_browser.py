"""The dashboard in a real Chromium against a real telemetry-server on 127.0.0.1: every
page shows the seeded fleet, filters and paging change the rows, links navigate, hostile
names stay text, and the page fits 360 px. Each page is saved as a screenshot."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from browser_harness import Browser
from daemons import Daemon, running_server
from dashboard_seed import (
    CHILD_EVENT_ID,
    FAILING_AGENT,
    FAILING_ERROR,
    HOSTILE_EVENT_ID,
    SILENT_AGENT,
    STALE_EVENT_ID,
    XSS_AGENT,
    XSS_ERROR,
    XSS_JOB,
    build_fleet,
    seed_over_http,
)
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[Daemon]:
    """One server for the module, seeded once (the reaper idle: the overdue run stays)."""
    with tempfile.TemporaryDirectory(prefix="ui-browser-") as workdir:
        env = {"TELEMETRY_REAPER_INTERVAL_S": "86400", "TELEMETRY_API_AUTH_ENABLED": "false"}
        with running_server(Path(workdir), env=env) as daemon:
            seed_over_http(daemon.url, build_fleet())
            yield daemon


def texts(browser: Browser, selector: str) -> list[str]:
    return [e.text for e in browser.driver.find_elements(By.CSS_SELECTOR, selector)]


def no_alert(browser: Browser) -> None:
    with pytest.raises(NoAlertPresentException):
        browser.driver.switch_to.alert.text  # noqa: B018 - raises when no alert is open


def submit(browser: Browser, expect: str) -> None:
    """Submit the filters and wait for the page they lead to."""
    browser.navigate(
        browser.driver.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click
    )
    WebDriverWait(browser.driver, 10).until(lambda d: expect in d.current_url)


def follow(browser: Browser, element: Any) -> None:
    """Click a link and wait for the page it leads to."""
    browser.navigate(element.click)


def fits(browser: Browser) -> None:
    """No horizontal scroll of the page itself (wide tables scroll inside their box)."""
    overflow = browser.driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than the window"


def test_overview_answers_what_failed_where_and_since_when(
    browser: Browser, server: Daemon
) -> None:
    browser.get(server.url + "/")  # a browser at / lands on the overview
    driver = browser.driver
    assert driver.current_url == server.url + "/ui/"
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith("Fleet overview")
    failing = driver.find_element(By.CSS_SELECTOR, "#failing-now ~ .scroll table").text
    assert FAILING_AGENT in failing
    assert FAILING_ERROR in failing
    assert SILENT_AGENT in driver.find_element(By.CSS_SELECTOR, "#silent ~ .scroll table").text
    assert STALE_EVENT_ID in driver.find_element(By.CSS_SELECTOR, "#stale ~ .scroll table").text
    # Status is told by text and shape, not colour alone.
    tile = driver.find_element(By.CSS_SELECTOR, ".tile.t-failure").text
    assert "failure" in tile
    assert "✗" in tile
    # Click 1: the failing streak's count -> that agent + job's runs since it began.
    row = driver.find_element(By.XPATH, f"//tr[td/a[text()='{FAILING_AGENT}']]")
    streak = row.find_element(By.CSS_SELECTOR, "td.num a")
    assert streak.text == "4"
    follow(browser, streak)
    assert "/ui/runs?" in driver.current_url
    statuses = texts(browser, "table.runs tbody td:first-child")
    assert len(statuses) == 4
    assert all("failure" in s for s in statuses)
    # Click 2: the newest failure's own page: its error and when it started.
    follow(browser, driver.find_element(By.CSS_SELECTOR, "table.runs tbody td.id a"))
    assert "/ui/runs/" in driver.current_url
    assert FAILING_ERROR in driver.find_element(By.CSS_SELECTOR, "p.alert").text
    assert "Started" in driver.find_element(By.CSS_SELECTOR, "ol.timeline").text
    browser.get(server.url + "/ui/")
    browser.screenshot("dashboard-overview", 1440)
    browser.screenshot("dashboard-overview-360", 360, 800)
    driver.set_window_size(360, 800)
    try:
        fits(browser)
    finally:
        driver.set_window_size(1440, 1000)


def test_a_status_tile_opens_its_filtered_list(browser: Browser, server: Daemon) -> None:
    browser.get(server.url + "/ui/?window=7d")
    driver = browser.driver
    tile = driver.find_element(By.CSS_SELECTOR, ".tile.t-success a")
    expected = int(tile.find_element(By.CSS_SELECTOR, ".big").text.replace(",", ""))
    follow(browser, tile)
    assert "status=success" in driver.current_url
    Select(driver.find_element(By.ID, "f-limit")).select_by_visible_text("200")
    submit(browser, "limit=200")
    rows = texts(browser, "table.runs tbody td:first-child")
    assert len(rows) == expected
    assert all("success" in s for s in rows)


def test_runs_filters_paging_and_back(browser: Browser, server: Daemon) -> None:
    browser.get(server.url + "/ui/runs")
    driver = browser.driver
    driver.find_element(By.ID, "f-agent").send_keys(SILENT_AGENT)
    Select(driver.find_element(By.ID, "f-limit")).select_by_visible_text("25")
    submit(browser, "agent_name=gamma-indexer")
    first = texts(browser, "table.runs tbody td.id")
    agents = texts(browser, "table.runs tbody td:nth-child(2)")
    assert len(first) == 25
    assert set(agents) == {SILENT_AGENT}
    browser.screenshot("dashboard-runs", 1440)
    follow(browser, driver.find_element(By.CSS_SELECTOR, "a[rel=next]"))
    second = texts(browser, "table.runs tbody td.id")
    assert len(second) == 25
    assert not set(first) & set(second)
    assert driver.find_element(By.ID, "f-agent").get_attribute("value") == SILENT_AGENT
    browser.navigate(driver.back)
    assert texts(browser, "table.runs tbody td.id") == first
    # A status filter narrows them further; a bad instant is a 400 page saying why.
    Select(driver.find_element(By.ID, "f-status")).select_by_visible_text("failure")
    submit(browser, "status=failure")
    assert "No runs." in driver.find_element(By.CSS_SELECTOR, "table.runs").text
    browser.get(server.url + "/ui/runs?start_time_from=yesterday")
    assert "400" in driver.find_element(By.TAG_NAME, "h1").text
    assert "start_time_from" in driver.find_element(By.CSS_SELECTOR, ".messages").text
    browser.drain_logs()  # the 400 itself is logged by the browser as a failed load


def test_hostile_names_render_as_text(browser: Browser, server: Daemon) -> None:
    driver = browser.driver
    browser.get(server.url + "/ui/runs?agent_name=" + quote(XSS_AGENT, safe=""))
    no_alert(browser)
    cells = driver.find_elements(By.CSS_SELECTOR, "table.runs tbody td")
    shown = [cell.text for cell in cells]
    assert XSS_AGENT in shown
    assert XSS_JOB in shown
    assert XSS_ERROR in shown
    assert not driver.find_elements(By.CSS_SELECTOR, "main img, main svg[onload]")
    # The event_id full of ? % # & and unicode links to its own page.
    follow(browser, driver.find_element(By.CSS_SELECTOR, "table.runs tbody td.id a"))
    no_alert(browser)
    assert driver.find_element(By.CSS_SELECTOR, "h1 .id").text == HOSTILE_EVENT_ID


def test_run_detail_shows_fields_json_and_relatives(browser: Browser, server: Daemon) -> None:
    browser.get(server.url + "/ui/runs/etl-parent-1")
    driver = browser.driver
    related = driver.find_element(By.CSS_SELECTOR, "#related").find_element(By.XPATH, "..").text
    assert CHILD_EVENT_ID in related
    assert "etl-retry-1" in related
    browser.screenshot("dashboard-run", 1440)
    follow(browser, driver.find_element(By.LINK_TEXT, CHILD_EVENT_ID))
    assert driver.find_element(By.CSS_SELECTOR, "h1 .id").text == CHILD_EVENT_ID
    browser.get(server.url + "/ui/runs/e-0030")
    metrics = driver.find_element(By.XPATH, "//h2[@id='metrics']/following-sibling::pre").text
    assert '"rows": 10000' in metrics
    browser.get(server.url + "/ui/runs/e-0000")
    link = driver.find_element(By.PARTIAL_LINK_TEXT, "0123456789abcdef")
    assert link.get_attribute("href").startswith("https://github.com/example-org/crawler/commit/")
    browser.get(server.url + "/ui/runs/" + quote("missing run", safe=""))
    assert "404" in driver.find_element(By.TAG_NAME, "h1").text
    browser.drain_logs()  # the 404 is logged by the browser as a failed load


def test_agents_and_job_types(browser: Browser, server: Daemon) -> None:
    driver = browser.driver
    browser.get(server.url + "/ui/agents?window=7d")
    table = driver.find_element(By.CSS_SELECTOR, "main table").text
    assert XSS_AGENT in table
    assert "silent" in table
    browser.screenshot("dashboard-agents", 1440)
    follow(browser, driver.find_element(By.LINK_TEXT, FAILING_AGENT))
    assert driver.find_element(By.CSS_SELECTOR, "h1 .id").text == FAILING_AGENT
    chart = driver.find_element(By.CSS_SELECTOR, "svg.chart")
    assert "p50" in chart.get_attribute("innerHTML")
    assert "UTC day" in chart.text
    assert driver.find_elements(By.CSS_SELECTOR, "svg.spark rect.bar")
    browser.screenshot("dashboard-agent", 1440)
    browser.get(server.url + "/ui/jobs?window=7d")
    assert "nightly-etl" in driver.find_element(By.CSS_SELECTOR, "main table").text
    browser.screenshot("dashboard-jobs", 1440)
    follow(browser, driver.find_element(By.LINK_TEXT, "nightly-etl"))
    assert driver.find_elements(By.CSS_SELECTOR, "svg.chart path.line.p95")
    browser.screenshot("dashboard-job", 1440)


def test_keyboard_reaches_the_filters_and_refresh_is_off(browser: Browser, server: Daemon) -> None:
    """Tab from the top reaches the skip link first; auto-refresh is offered, and off."""
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url + "/ui/runs")
    driver = browser.driver
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.text == "Skip to content"
    toggle = driver.find_element(By.ID, "auto-refresh")
    assert toggle.is_displayed()
    assert not toggle.is_selected()
    for control in driver.find_elements(By.CSS_SELECTOR, ".filters input, .filters select"):
        label = driver.find_elements(By.CSS_SELECTOR, f"label[for='{control.get_attribute('id')}']")
        assert label, control.get_attribute("name")


@pytest.mark.parametrize(
    "path",
    [
        "/ui/?window=7d",
        "/ui/runs",
        "/ui/runs/" + quote(HOSTILE_EVENT_ID, safe=""),
        "/ui/runs/etl-parent-1",
        "/ui/agents",
        "/ui/agents/" + quote(FAILING_AGENT, safe=""),
        "/ui/jobs",
        "/ui/jobs/nightly-etl",
    ],
)
def test_every_page_fits_360_px(browser: Browser, server: Daemon, path: str) -> None:
    """A phone's width: the page body never scrolls sideways (wide tables scroll in
    their own box), and the navigation stays reachable."""
    driver = browser.driver
    driver.set_window_size(360, 800)
    try:
        browser.get(server.url + path)
        fits(browser)
        assert driver.find_element(By.LINK_TEXT, "Runs").is_displayed()
    finally:
        driver.set_window_size(1440, 1000)
