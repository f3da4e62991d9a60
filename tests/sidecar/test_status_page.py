"""spoold's status page at /ui/: what it shows, that it escapes, its headers, its failure states."""

from __future__ import annotations

import html
import re
import sqlite3
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sidecar_helpers import Sidecar, make_run, wait_until

from spoold.http.state import SIDECAR
from spoold.ui.letters import PAGE_SIZE

HOSTILE = "<img src=x onerror=alert(1)>"
_REGIONS = ("section", "header", "footer", "main")
HOSTILE_REASON = '"><script>alert("reason")</script><b style="x">'


@dataclass
class Page:
    """A parsed status page: the text of each section (by id), every tag with its attributes."""

    status: int
    headers: Any
    raw: str
    sections: dict[str, str] = field(default_factory=dict)
    tags: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    scripts_with_text: int = 0

    def text(self, section: str) -> str:
        return " ".join(self.sections.get(section, "").split())

    def links(self, label: str) -> list[str]:
        return [str(a.get("href")) for a, text in self._anchors if text.strip() == label]

    _anchors: list[tuple[dict[str, str | None], str]] = field(default_factory=list)


class _Parser(HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.stack: list[str] = []
        self.in_script = False
        self.anchor: tuple[dict[str, str | None], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.page.tags.append((tag, attributes))
        if tag in _REGIONS:
            self.stack.append(str(attributes.get("id") or tag))
        self.in_script = tag == "script"
        if tag == "a":
            self.anchor = (attributes, [])

    def handle_endtag(self, tag: str) -> None:
        if tag in _REGIONS and self.stack:
            self.stack.pop()
        if tag == "script":
            self.in_script = False
        if tag == "a" and self.anchor is not None:
            self.page._anchors.append((self.anchor[0], "".join(self.anchor[1])))
            self.anchor = None

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.page.scripts_with_text += 1
        for section in self.stack:
            # Cells and terms are separate words even where no whitespace separates them.
            self.page.sections[section] = self.page.sections.get(section, "") + data + " "
        if self.anchor is not None:
            self.anchor[1].append(data)


async def ui(sidecar: Sidecar, path: str = "/ui/", **headers: str) -> Page:
    async with sidecar.client.get(path, headers=headers, allow_redirects=False) as response:
        raw = await response.text()
        page = Page(response.status, response.headers, raw)
    assert "Traceback" not in raw
    _Parser(page).feed(raw)
    return page


def _store(sidecar: Sidecar) -> Any:
    return sidecar.client.app[SIDECAR].dead_letters


def _op(event_id: str, kind: str = "update") -> dict[str, Any]:
    return {"kind": kind, "event_id": event_id, "body": {"status": "failure"}, "accepted_at": "x"}


async def test_page_shows_the_queue_and_an_unreachable_upstream(dead_url, make_sidecar):
    """Queued writes, their age and bytes, and the upstream shown down, with its last error."""
    sidecar = await make_sidecar(dead_url)
    for _ in range(3):
        await sidecar.create(make_run())

    async def failing() -> bool:
        return (await sidecar.health())["upstream"]["reachable"] is False

    await wait_until(failing, "the upstream failure to show")
    page = await ui(sidecar)
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    queue = page.text("queue")
    assert "Queued operations 3" in queue
    assert "old (since" in queue
    upstream = page.text("upstream")
    assert "unreachable" in upstream
    assert dead_url in upstream
    assert "Last success never" in upstream
    assert "Cannot connect" in upstream
    assert "retrying: failure" in upstream
    assert "▲ degraded" in page.text("header")
    assert "upstream unreachable; writes are queued" in page.text("main")
    capacity = page.text("capacity")
    assert "room to spare" in capacity
    assert "Disk floor" in capacity
    assert "none" in page.text("dead-letters")


async def test_page_shows_a_reachable_upstream_after_a_drain(central, make_sidecar):
    """With the real server draining: reachable, a last success, nothing queued."""
    sidecar = await make_sidecar(central.url)
    for _ in range(4):
        await sidecar.create(make_run())
    await sidecar.wait_drained()
    page = await ui(sidecar)
    upstream = page.text("upstream")
    assert "✓ reachable" in upstream
    assert "unreachable" not in upstream
    assert re.search(r"Last success \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", upstream), upstream
    assert "Queued operations 0" in page.text("queue")
    assert "nothing queued" in page.text("queue")
    assert "Forwarded in total 4" in page.text("rates")
    assert "✓ ok" in page.text("header")


async def test_dead_letters_from_the_real_server_are_listed_escaped(
    dead_url, make_sidecar, start_central
):
    """An update for a run nobody knows, queued while the server was down, is refused by the
    real server once it is up: the page lists it, its hostile event id shown as text."""
    sidecar = await make_sidecar(dead_url)
    reply = await sidecar.patch(
        "/api/v1/runs/" + quote(HOSTILE, safe=""), json={"status": "failure"}
    )
    assert reply.status == 202, reply.body
    await sidecar.create(make_run())
    await start_central(port=int(dead_url.rsplit(":", 1)[1]))
    drained = await sidecar.wait_drained(timeout_s=20)
    assert drained["counters"]["dead_lettered"] == 1
    page = await ui(sidecar)
    letters = page.text("dead-letters")
    assert "1 operation the server refused" in letters
    assert HOSTILE in letters  # the text a person reads
    assert HOSTILE not in page.raw  # ... never markup
    assert html.escape(HOSTILE, quote=False) in page.raw
    assert "not found" in letters.lower()
    assert "update" in letters
    assert not [t for t, a in page.tags if t == "img"]


async def test_a_hostile_reason_is_text_and_the_page_has_no_inline_script_or_style(
    dead_url, make_sidecar
):
    """Reasons are the server's words, maybe echoing input: escaped; and the page itself has
    no inline script, no style attribute, no event handler attribute (the CSP forbids them)."""
    sidecar = await make_sidecar(dead_url)
    _store(sidecar).add(_op(HOSTILE), HOSTILE_REASON, 422)
    page = await ui(sidecar)
    assert HOSTILE_REASON in page.text("dead-letters")
    assert "<script>" not in page.raw
    assert page.scripts_with_text == 0
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts
    assert all(str(a.get("src", "")).startswith("/ui/static/") for a in scripts)
    for tag, attributes in page.tags:
        assert "style" not in attributes, tag
        assert not [name for name in attributes if name.startswith("on")], (tag, attributes)
    assert not [t for t, _ in page.tags if t == "style"]


async def test_security_headers(dead_url, make_sidecar):
    """Strict CSP (self only, no inline, no framing), nosniff, no caching of the page."""
    sidecar = await make_sidecar(dead_url)
    page = await ui(sidecar)
    csp = {
        part.strip().split(" ", 1)[0]: part.strip()
        for part in page.headers["Content-Security-Policy"].split(";")
    }
    assert csp["default-src"] == "default-src 'self'"
    assert csp["script-src"] == "script-src 'self'"
    assert csp["style-src"] == "style-src 'self'"
    assert csp["frame-ancestors"] == "frame-ancestors 'none'"
    assert "unsafe" not in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"
    for name, kind in (
        ("status.css", "text/css"),
        ("refresh.js", "text/javascript"),
        ("favicon.svg", "image/svg+xml"),
    ):
        async with sidecar.client.get(f"/ui/static/{name}") as response:
            assert response.status == 200
            assert response.content_type == kind
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert len(await response.read()) > 0


@pytest.mark.parametrize(
    "path", ["/ui/static/nope.js", "/ui/static/..%2F__init__.py", "/ui/static/%2e%2e/routes.py"]
)
async def test_only_the_listed_static_files_are_served(dead_url, make_sidecar, path):
    """Anything but the three files is the usual JSON 404: no path leads into the package."""
    sidecar = await make_sidecar(dead_url)
    reply = await sidecar.get(path)
    assert reply.status == 404


async def test_dead_letters_page_newest_first_by_id(dead_url, make_sidecar):
    """Many dead letters: the newest page first; Older and Newer walk by id, no gaps, no repeats."""
    sidecar = await make_sidecar(dead_url)
    total = 2 * PAGE_SIZE + 7
    ids = _store(sidecar).add_many([(_op(f"run-{n}"), f"reason {n}", 422) for n in range(total)])
    page = await ui(sidecar)
    assert f"{total} operations the server refused" in page.text("dead-letters")

    def shown(p: Page) -> list[str]:
        return re.findall(r"\brun-(\d+)\b", p.text("dead-letters"))

    first = shown(page)
    assert first == [str(n) for n in range(total - 1, total - 1 - PAGE_SIZE, -1)]
    assert page.links("← Newer") == []
    seen = list(first)
    for _ in range(5):
        older = page.links("Older →")
        if not older:
            break
        page = await ui(sidecar, "/ui/" + older[0].removeprefix("./"))
        seen += shown(page)
    assert seen == [str(n) for n in range(total - 1, -1, -1)]
    newer = page.links("← Newer")
    assert newer
    back = await ui(sidecar, "/ui/" + newer[0].removeprefix("./"))
    # The last page held run-6 .. run-0: the page above it is the PAGE_SIZE letters after run-6.
    assert shown(back) == [str(n) for n in range(6 + PAGE_SIZE, 6, -1)]
    assert len(ids) == total
    beyond = await ui(sidecar, f"/ui/?after={ids[-1] + 1000}")  # a stale link: past the newest
    assert beyond.status == 200
    assert shown(beyond) == []
    way_back = await ui(sidecar, "/ui/" + beyond.links("Older →")[0].removeprefix("./"))
    assert shown(way_back) == first


async def test_a_missing_or_damaged_dead_letter_store_is_a_state_not_a_500(
    dead_url, make_sidecar, spool_dir: Path
):
    """The store's file gone, then garbage in its place: 200, and the page says it cannot
    read it (the rest of the page still shows)."""
    sidecar = await make_sidecar(dead_url)
    path = Path(_store(sidecar).path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240 (a test's setup)
    page = await ui(sidecar)
    assert page.status == 200
    assert "cannot be read" in page.text("dead-letters")
    assert "Queued operations" in page.text("queue")
    assert "▲ degraded" in page.text("header")
    path.write_bytes(b"this is not a database" * 400)  # noqa: ASYNC240
    page = await ui(sidecar)
    assert page.status == 200
    assert "cannot be read" in page.text("dead-letters")
    assert "DatabaseError" in page.text("dead-letters")


@pytest.mark.parametrize(
    "query",
    [
        "before=abc",
        "before=-1",
        "after=1e3",
        "before=99999999999999999999",
        "before=1&after=2",
        "refresh=7",
        "refresh=abc",
        "before=%D9%A3",
    ],
)
async def test_bad_page_parameters_are_a_clear_400(dead_url, make_sidecar, query):
    """Paging ids and the refresh period are checked: 400 with the JSON error, never a 500."""
    sidecar = await make_sidecar(dead_url)
    reply = await sidecar.get(f"/ui/?{query}")
    assert reply.status == 400
    assert reply.body["error"] == "bad_request"


async def test_auto_refresh_is_an_attribute_the_script_reads(dead_url, make_sidecar):
    """?refresh=15 marks <body> for the external script; the paging links keep it."""
    sidecar = await make_sidecar(dead_url)
    page = await ui(sidecar, "/ui/?refresh=15")
    body = next(a for t, a in page.tags if t == "body")
    assert body.get("data-refresh") == "15"
    plain = await ui(sidecar)
    assert "data-refresh" not in next(a for t, a in plain.tags if t == "body")


async def test_root_redirects_browsers_and_is_unchanged_for_api_clients(dead_url, make_sidecar):
    """GET / with Accept: text/html goes to /ui/; any other client gets the JSON 404 it got
    before the page existed (for every method)."""
    sidecar = await make_sidecar(dead_url)
    browser = await ui(sidecar, "/", Accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert browser.status == 302
    assert browser.headers["Location"] == "/ui/"
    bare = await ui(sidecar, "/ui")
    assert (bare.status, bare.headers["Location"]) == (302, "/ui/")
    unknown = await sidecar.get("/no-such-route")
    for method, accept in (
        ("GET", "*/*"),
        ("GET", "application/json"),
        ("HEAD", "*/*"),
        ("POST", "text/html"),
        ("DELETE", "*/*"),
    ):
        async with sidecar.client.request(method, "/", headers={"Accept": accept}) as response:
            assert response.status == 404, (method, accept)
            if method != "HEAD":
                assert await response.json() == unknown.body


async def test_damaged_records_and_huge_reasons_still_render(dead_url, make_sidecar):
    """A record whose operation is not JSON, whose time is out of range, a 1 MB reason, a
    right-to-left override in an id: the page answers 200 and shows what it can."""
    sidecar = await make_sidecar(dead_url)
    store = _store(sidecar)
    store.add(_op("rtl-\u202eevil"), "x" * (1 << 20), 422)
    conn = sqlite3.connect(store.path)
    try:
        conn.execute(
            "INSERT INTO dead_letters (op_key, op, error, status, first_failed_at, last_failed_at)"
            " VALUES ('k', '{broken', 'bad row', NULL, 1e300, 1e300)"
        )
        conn.commit()
    finally:
        conn.close()
    page = await ui(sidecar)
    assert page.status == 200
    letters = page.text("dead-letters")
    assert "2 operations the server refused" in letters
    assert "(unreadable) ? none" in letters
    assert "bad row" in letters
    assert "rtl-\u202eevil" in letters
    assert "x" * 2000 in page.raw
    assert "x" * 2001 not in page.raw  # the reason is cut for the page (the CLI shows it all)


async def test_the_page_reads_the_file_not_the_daemons_handle(dead_url, make_sidecar):
    """The drainer's store handle closed (as at a stop): the page still lists the letters, from
    its own read-only connection, and leaves the database file as it was (SQLite may add the
    empty -wal/-shm files a reader of a WAL database needs)."""
    sidecar = await make_sidecar(dead_url)
    store = _store(sidecar)
    store.add(_op("kept"), "refused", 422)
    store.close()  # the last connection: SQLite checkpoints the WAL into the file here
    before = Path(store.path).read_bytes()  # noqa: ASYNC240
    page = await ui(sidecar)
    assert page.status == 200
    assert "kept" in page.text("dead-letters")
    assert Path(store.path).read_bytes() == before  # noqa: ASYNC240
