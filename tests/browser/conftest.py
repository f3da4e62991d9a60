"""A real headless Chromium, driven by Selenium, for the dashboard tests.

Chromium and its driver come from the distribution's packages (``.ci/run`` installs
``chromium`` and ``chromium-driver``); nothing is downloaded at test time. One browser
serves the whole session; every test starts with no cookies and empty logs.

Each test is checked after it ran: the browser console holds no error, and no request
the page made went anywhere but 127.0.0.1 (Chrome's performance log lists every one).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

from browser_harness import CHROMEDRIVER, CHROMIUM, DEAD_PROXY, Browser, foreign, require_browser  # noqa: E402


@pytest.fixture(scope="session")
def _chromium() -> Iterator[Any]:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--window-size=1440,1000",
        f"--proxy-server={DEAD_PROXY}",
        "--proxy-bypass-list=<-loopback>;127.0.0.1",  # only the daemons under test go direct
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        try:
            driver.quit()  # ends chromedriver and the browser it started
        finally:
            process = service.process  # a quit that failed: chromedriver stopped by its PID
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(_chromium: Any) -> Iterator[Browser]:
    """The shared browser, clean; fails the test on a console error or a foreign request."""
    browser = Browser(_chromium)
    browser.reset()
    yield browser
    console, urls = browser.drain_logs()
    errors = [e for e in console if e.get("level") == "SEVERE"]
    assert not errors, f"browser console errors: {errors}"
    assert not foreign(urls), f"requests leaving 127.0.0.1: {foreign(urls)}"
