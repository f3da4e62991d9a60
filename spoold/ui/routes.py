"""spoold's status page at /ui/, its three static files, and / sending browsers there.

Read-only: the page has no form that changes anything (the dead-letter CLI does
that). Every answer carries a strict Content-Security-Policy: scripts, styles and
images only from spoold itself, no inline script or style, no framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import aiohttp_jinja2
import structlog
from aiohttp import web

from server.contract.errors import BadRequest, ServiceUnavailable, retry_after
from server.edge.files import listed_files
from spoold.http.health import REFUSAL_WINDOW_S
from spoold.http.prometheus import SIDECAR_METRICS
from spoold.http.state import SIDECAR, Sidecar
from spoold.ui import page
from spoold.ui.letters import LetterPage, read_page
from spoold.ui.rates import RateRing

log = structlog.get_logger("spoold.ui")

UI_PATH = "/ui/"
STATIC_PATH = "/ui/static"
#: Auto-refresh periods the page offers (seconds); the script reloads the page.
REFRESH_CHOICES = (5, 15, 60)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_PAGE_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
_STATIC_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "max-age=300"}
#: The only files /ui/static/ serves, with their types.
_STATIC_FILES = {
    "status.css": "text/css; charset=utf-8",
    "refresh.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_MAX_ID = 2**63 - 1

RATES: web.AppKey[RateRing] = web.AppKey("spoold_ui_rates", RateRing)


def static_files() -> dict[str, tuple[Path, str]]:
    """The static files of the installed package; missing ones stop spoold at start."""
    root = resources.files("spoold.ui").joinpath("static")
    found: dict[str, tuple[Path, str]] = {}
    for name, content_type in _STATIC_FILES.items():
        resource = root.joinpath(name)
        if not isinstance(resource, Path) or not resource.is_file():
            raise RuntimeError(f"spoold's status page file is missing: static/{name}")
        found[name] = (resource, content_type)
    return found


def _page_id(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or not 0 <= int(value) <= _MAX_ID:
        raise BadRequest(f"{name} must be a dead letter's id (a whole number)")
    return int(value)


def _refresh(query: Mapping[str, str]) -> int | None:
    value = query.get("refresh")
    if value is None or value in ("", "0"):
        return None
    if value not in {str(choice) for choice in REFRESH_CHOICES}:
        choices = ", ".join(str(c) for c in REFRESH_CHOICES)
        raise BadRequest(f"refresh must be one of 0, {choices} (seconds)")
    return int(value)


async def status_page(request: web.Request) -> web.Response:
    """The status page: read-only, assembled from live state (``spoold.ui.page``)."""
    before, after = _page_id(request.query, "before"), _page_id(request.query, "after")
    if before is not None and after is not None:
        raise BadRequest("give before or after, not both")
    refresh = _refresh(request.query)
    sidecar = request.app[SIDECAR]
    letters = await _letters(sidecar, before, after)
    try:
        response = _render(request, sidecar, letters, refresh, before, after)
    except Exception as exc:  # a state the page did not foresee: say so, never a 500
        log.exception("ui_page_failed")
        raise ServiceUnavailable(
            "the status page could not be built; /health has the same numbers",
            headers=retry_after(1),
        ) from exc
    response.headers.update(_PAGE_HEADERS)
    return response


async def _letters(sidecar: Sidecar, before: int | None, after: int | None) -> LetterPage:
    try:
        return await asyncio.to_thread(
            read_page, sidecar.dead_letters.path, before=before, after=after
        )
    except Exception as exc:  # never a 500: the page says the store cannot be read
        log.warning("ui_dead_letters_unreadable", error=repr(exc)[:300])
        return LetterPage(error=f"{type(exc).__name__}: {exc}"[:300])


def _render(
    request: web.Request,
    sidecar: Sidecar,
    letters: LetterPage,
    refresh: int | None,
    before: int | None,
    after: int | None,
) -> web.Response:
    stats = sidecar.spool.stats()
    counts = sidecar.ledger.snapshot()
    view = page.build(
        sidecar,
        stats,
        counts,
        request.app[RATES].rates(counts),
        letters,
        refusing=request.app[SIDECAR_METRICS].refused_within(REFUSAL_WINDOW_S),
    )
    context = {
        "page": view,
        "refresh": refresh,
        "refresh_choices": REFRESH_CHOICES,
        "before": before,
        "after": after,
        "static": STATIC_PATH,
    }
    return aiohttp_jinja2.render_template("status.html", request, context)


async def to_ui(request: web.Request) -> web.Response:
    """/ui without its slash: the page is at /ui/ (relative links resolve from there)."""
    return _redirect(UI_PATH)


async def root(request: web.Request) -> web.Response:
    """A browser asking for / is sent to the status page; any other client gets the 404
    every unknown path gets (what / answered before the page existed)."""
    if request.method in ("GET", "HEAD") and _wants_html(request.headers.get("Accept", "")):
        response = _redirect(UI_PATH)
        response.headers["Vary"] = "Accept"
        return response
    raise web.HTTPNotFound()


def _wants_html(accept: str) -> bool:
    return any(part.split(";")[0].strip().lower() == "text/html" for part in accept.split(","))


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, **SECURITY_HEADERS})


def routes() -> list[web.RouteDef]:
    """The page's routes; reads the static files' locations once (at app creation)."""
    static = listed_files(static_files(), _STATIC_HEADERS)

    return [
        web.route("*", "/", root),
        web.get("/ui", to_ui),
        web.get(UI_PATH, status_page),
        # `{name}` never matches a "/", and only allow-listed names map to a file.
        web.get(STATIC_PATH + "/{name}", static),
    ]
