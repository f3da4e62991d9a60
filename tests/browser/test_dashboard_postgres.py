"""The dashboard in a real Chromium against a real telemetry-server process on PostgreSQL
(``TELEMETRY_DATABASE_URL``, a throwaway cluster on 127.0.0.1): the overview shows the
seeded fleet (the failing streak, the silent agent, the overdue run, hostile names as
text), its links lead to the filtered runs list and a run's page, and the runs list
filters and pages by its cursor, as on SQLite."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg_cluster
import pytest
from browser_harness import Browser
from daemons import Daemon, running_server
from dashboard_seed import (
    FAILING_AGENT,
    FAILING_ERROR,
    HOSTILE_EVENT_ID,
    SILENT_AGENT,
    STALE_EVENT_ID,
    XSS_AGENT,
    XSS_ERROR,
    build_fleet,
    seed_over_http,
)
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture(scope="module")
def server() -> Iterator[Daemon]:
    """A PostgreSQL cluster of its own, and one server on it for the module, seeded once
    (the reaper idle: the overdue run stays)."""
    cluster = pg_cluster.Cluster.start(pg_cluster.require_postgres())
    try:
        url = cluster.url(cluster.new_database("ui"))
        with tempfile.TemporaryDirectory(prefix="ui-browser-pg-") as workdir:
            env = {
                key: value
                for key, value in os.environ.items()
                if not key.startswith("TELEMETRY_") and key != "DATABASE_URL"
            }
            env.update(
                TELEMETRY_DATABASE_URL=url,
                TELEMETRY_REAPER_INTERVAL_S="86400",
                TELEMETRY_API_AUTH_ENABLED="false",
            )
            with running_server(Path(workdir), env=env) as daemon:
                seed_over_http(daemon.url, build_fleet())
                yield daemon
    finally:
        cluster.destroy()


def texts(browser: Browser, selector: str) -> list[str]:
    return [e.text for e in browser.driver.find_elements(By.CSS_SELECTOR, selector)]


def follow(browser: Browser, element: Any) -> None:
    """Click a link and wait for the page it leads to."""
    browser.navigate(element.click)


def test_the_overview_on_postgresql_shows_the_fleet_and_leads_to_its_runs(
    browser: Browser, server: Daemon
) -> None:
    browser.get(server.url + "/ui/")
    driver = browser.driver
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith("Fleet overview")
    assert "not available" not in driver.page_source.lower()  # no 501 page
    failing = driver.find_element(By.CSS_SELECTOR, "#failing-now ~ .scroll table").text
    assert FAILING_AGENT in failing
    assert FAILING_ERROR in failing
    assert XSS_AGENT in failing  # a hostile name, shown as text
    assert SILENT_AGENT in driver.find_element(By.CSS_SELECTOR, "#silent ~ .scroll table").text
    assert STALE_EVENT_ID in driver.find_element(By.CSS_SELECTOR, "#stale ~ .scroll table").text
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - raises when no alert is open
    # The failing streak's count -> that agent + job's failed runs since it began.
    row = driver.find_element(By.XPATH, f"//tr[td/a[text()='{FAILING_AGENT}']]")
    streak = row.find_element(By.CSS_SELECTOR, "td.num a")
    assert streak.text == "4"
    follow(browser, streak)
    assert "/ui/runs?" in driver.current_url
    statuses = texts(browser, "table.runs tbody td:first-child")
    assert len(statuses) == 4
    assert all("failure" in s for s in statuses)
    # The newest failure's own page: its error and its timeline.
    follow(browser, driver.find_element(By.CSS_SELECTOR, "table.runs tbody td.id a"))
    assert "/ui/runs/" in driver.current_url
    assert FAILING_ERROR in driver.find_element(By.CSS_SELECTOR, "p.alert").text
    assert "Started" in driver.find_element(By.CSS_SELECTOR, "ol.timeline").text
    browser.screenshot("dashboard-overview-postgresql", 1440)


def test_the_runs_list_on_postgresql_filters_and_pages(browser: Browser, server: Daemon) -> None:
    browser.get(server.url + "/ui/runs")
    driver = browser.driver
    driver.find_element(By.ID, "f-agent").send_keys(SILENT_AGENT)
    Select(driver.find_element(By.ID, "f-limit")).select_by_visible_text("25")
    browser.navigate(driver.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click)
    WebDriverWait(driver, 10).until(lambda d: "agent_name=gamma-indexer" in d.current_url)
    first = texts(browser, "table.runs tbody td.id")
    assert len(first) == 25
    assert set(texts(browser, "table.runs tbody td:nth-child(2)")) == {SILENT_AGENT}
    # The next page, by the cursor PostgreSQL signed: 25 older runs, none repeated.
    follow(browser, driver.find_element(By.CSS_SELECTOR, "a[rel=next]"))
    assert "cursor=" in driver.current_url
    second = texts(browser, "table.runs tbody td.id")
    assert len(second) == 25
    assert not set(first) & set(second)
    # A hostile event_id's page: its error shown as text, no script run.
    browser.get(server.url + "/ui/runs")
    link = driver.find_element(By.XPATH, f"//td[@class='id']/a[text()='{HOSTILE_EVENT_ID}']")
    follow(browser, link)
    assert XSS_ERROR in driver.find_element(By.CSS_SELECTOR, "p.alert").text
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - raises when no alert is open
