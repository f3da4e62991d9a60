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
    # 192.0.2.1 (TEST-NET-1) is never routed: the request is logged, then it fails.
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
