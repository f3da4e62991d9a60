"""The dashboard's login in a real Chromium, against a server with protected reads: no
data before the token, an error for a wrong one, the page asked for after the right
one, and the login page again after signing out."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_harness import Browser
from daemons import Daemon, running_server
from dashboard_seed import FAILING_AGENT, build_fleet, seed_over_http
from selenium.webdriver.common.by import By

pytestmark = pytest.mark.integration
TOKEN = "browser-test-token-7f3a"


@pytest.fixture(scope="module")
def server() -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="ui-login-") as workdir:
        env = {
            "TELEMETRY_REAPER_INTERVAL_S": "86400",
            "TELEMETRY_API_AUTH_ENABLED": "true",
            "TELEMETRY_API_AUTH_TOKEN": TOKEN,
            "TELEMETRY_API_AUTH_PROTECT_READS": "true",
        }
        with running_server(Path(workdir), env=env) as daemon:
            seed_over_http(daemon.url, build_fleet(), {"Authorization": f"Bearer {TOKEN}"})
            yield daemon


def sign_in(browser: Browser, token: str) -> None:
    driver = browser.driver
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    browser.navigate(driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click)


def test_login_flow(browser: Browser, server: Daemon) -> None:
    driver = browser.driver
    browser.get(server.url + "/ui/agents")
    assert "/ui/login?next=" in driver.current_url
    assert FAILING_AGENT not in driver.page_source
    browser.screenshot("dashboard-login", 1440, 700)
    sign_in(browser, "not-the-token")
    assert "not the server's API token" in driver.find_element(By.CSS_SELECTOR, ".alert").text
    assert FAILING_AGENT not in driver.page_source
    browser.drain_logs()  # the 401 answer is logged by the browser as a failed load
    sign_in(browser, TOKEN)
    assert driver.current_url == server.url + "/ui/agents"
    assert FAILING_AGENT in driver.find_element(By.CSS_SELECTOR, "main table").text
    cookie = driver.get_cookie("lt_ui_session")
    assert cookie is not None
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    assert driver.execute_script("return document.cookie") == ""  # HttpOnly: not for scripts
    browser.get(server.url + "/ui/")  # the session holds across pages
    assert FAILING_AGENT in driver.page_source
    browser.navigate(driver.find_element(By.CSS_SELECTOR, "form.logout button").click)
    assert "/ui/login" in driver.current_url
    browser.get(server.url + "/ui/runs")
    assert "/ui/login" in driver.current_url
    assert FAILING_AGENT not in driver.page_source
