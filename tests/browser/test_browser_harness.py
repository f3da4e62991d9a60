"""The harness's own checks can fail: a console error and a foreign request are seen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from browser_harness import Browser, foreign

# A page served as a file: no daemon needed to check the browser's own checks.


def test_a_console_error_is_seen(browser: Browser, tmp_path: Path) -> None:
    page = tmp_path / "error.html"
    page.write_text("<!doctype html><title>t</title><img src='missing-file.png'>")
    browser.get(page.as_uri())
    console, _ = browser.drain_logs()
    assert any(e["level"] == "SEVERE" for e in console)


def test_foreign_requests_are_told_apart() -> None:
    assert foreign(["http://127.0.0.1:8766/ui/", "data:image/png;base64,AA"]) == []
    assert foreign(["http://localhost:1/", "https://cdn.example/x.js"]) == [
        "http://localhost:1/",
        "https://cdn.example/x.js",
    ]


def test_a_request_leaving_the_machine_is_recorded(browser: Browser, tmp_path: Path) -> None:
    page = tmp_path / "foreign.html"
    # The browser's proxy is a closed port on 127.0.0.1: the request is logged, then it
    # fails there, without a packet leaving the machine.
    page.write_text(
        "<!doctype html><title>t</title><link rel=stylesheet href='http://192.0.2.1/x.css'>"
    )
    driver: Any = browser.driver
    driver.set_page_load_timeout(5)
    try:
        browser.get(page.as_uri())
    except Exception:  # a timeout is fine: the request was made
        pass
    finally:
        driver.set_page_load_timeout(20)
    _, urls = browser.drain_logs()
    assert "http://192.0.2.1/x.css" in foreign(urls)


def test_the_browser_sends_everything_but_loopback_to_a_dead_local_proxy(
    browser: Browser,
) -> None:
    """Nothing a page asks for can leave 127.0.0.1 (the brief's rule), whatever the
    page: the browser's only route out is a proxy on a closed local port."""
    from browser_harness import DEAD_PROXY

    driver: Any = browser.driver
    driver.set_page_load_timeout(10)
    try:
        browser.get("http://192.0.2.1/")
    except Exception:  # an error page or a timeout: what is asserted is below
        pass
    finally:
        driver.set_page_load_timeout(20)
    text = str(driver.execute_script("return document.body ? document.body.innerText : ''"))
    assert "ERR_PROXY_CONNECTION_FAILED" in text, text[:500]
    assert DEAD_PROXY.startswith("http://127.0.0.1:")
    browser.drain_logs()  # the foreign URL was the point; the fixture must not fail on it
