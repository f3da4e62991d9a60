"""The dashboard tests' browser: a real headless Chromium driven by Selenium, and the
checks every test shares (no console error, no request leaving 127.0.0.1)."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: The browser's proxy for everything but loopback: a port nothing listens on (the
#: discard port; refused), so no request a page makes can leave the machine.
DEAD_PROXY = "http://127.0.0.1:9"
#: Where screenshots go. The README shows the ones tests/browser/screenshots holds; they are
#: refreshed on purpose (``UI_SCREENSHOT_DIR=tests/browser/screenshots pytest tests/browser``),
#: so an ordinary test run leaves the checkout unchanged.
SCREENSHOTS = Path(
    os.environ.get("UI_SCREENSHOT_DIR", Path(tempfile.gettempdir()) / "telemetry-ui-screenshots")
)
#: Schemes a page may load without leaving the machine.
_LOCAL_SCHEMES = {"data", "about", "blob", "file", "chrome", "chrome-extension", "devtools"}


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        return
    reason = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI installs them: their absence there is a failure
    pytest.skip(reason)


class Browser:
    """The session's Chromium, with the checks every test shares."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def get(self, url: str) -> None:
        self.driver.get(url)

    def navigate(self, action: Callable[[], None], timeout_s: float = 10.0) -> None:
        """Run ``action`` (a click, a submit, ``back()``) and wait until another document
        has loaded. The old page is marked with a fresh token that the next document lacks:
        waiting for the old ``<html>`` element to go stale instead raced Chromium, which
        sometimes answers "Node with given id does not belong to the document" mid-way."""
        token = uuid.uuid4().hex
        self.driver.execute_script("window.__ltNavigation = arguments[0]", token)
        action()
        loaded = (
            "return document.readyState === 'complete' && window.__ltNavigation !== arguments[0]"
        )
        wait = WebDriverWait(self.driver, timeout_s, ignored_exceptions=(WebDriverException,))
        wait.until(lambda driver: driver.execute_script(loaded, token))

    def reset(self) -> None:
        self.driver.delete_all_cookies()
        self.drain_logs()

    def drain_logs(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(console entries, request URLs) since the last call."""
        console = list(self.driver.get_log("browser"))
        urls: list[str] = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return console, urls

    def screenshot(self, name: str, width: int = 1440, height: int = 1000) -> Path:
        """Save the page at ``width`` px as ``SCREENSHOTS/name.png`` (full page height)."""
        self.driver.set_window_size(width, height)
        full = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, max(height, min(int(full), 4000)))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(width, height)
        return path


def foreign(urls: list[str]) -> list[str]:
    """The URLs that would leave 127.0.0.1."""
    out = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in _LOCAL_SCHEMES:
            continue
        if parts.scheme in {"http", "https", "ws", "wss"} and parts.hostname == "127.0.0.1":
            continue
        out.append(url)
    return out
