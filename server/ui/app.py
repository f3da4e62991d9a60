"""Wiring the dashboard into the server's app: templates, static files, routes, and the
middleware that gives every dashboard response its headers, its login and its error
pages (HTML, never the API's JSON, never a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from server.config import ServerConfig
from server.contract.errors import ApiError, ValidationFailed
from server.http.backend import NotOnThisBackend
from server.storage.connection import StorageUnavailable
from server.storage.stats import TooManyGroups
from server.ui import fleet, login, pages
from server.ui.format import FILTERS, STATUS_SHAPES, ago, query
from server.ui.paths import is_ui_request, wants_html
from server.ui.render import render
from server.ui.security import HEADERS, PAGE_CACHE, SESSION, STATIC_CACHE, Session
from server.ui.window import WINDOWS, BadParameter

log = structlog.get_logger("server.ui")

_HERE = Path(__file__).resolve().parent
STATIC_PREFIX = "/ui/static/"
STATIC_ROUTE = "/ui/static"
#: Dashboard paths anyone may fetch: the login page, the logout, and /ui (a redirect to
#: /ui/, no data; the session cookie's path is /ui/, so a browser does not send it there).
_OPEN = ("/ui", "/ui/login", "/ui/logout")


def _error_page(request: web.Request, status: int, title: str, messages: list[str]) -> web.Response:
    return render(
        request, "error.html", {"status": status, "title": title, "messages": messages}, status
    )


def _validation_messages(exc: ValidationFailed) -> list[str]:
    messages = []
    detail = exc.detail if isinstance(exc.detail, list) else [exc.detail]
    for entry in detail:
        if isinstance(entry, dict):
            where = [str(part) for part in entry.get("loc", ()) if part != "query"]
            field = ".".join(where)
            messages.append(f"{field}: {entry.get('msg', '')}" if field else str(entry.get("msg")))
        else:
            messages.append(str(entry))
    return messages


@web.middleware
async def ui_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only for dashboard requests: login, HTML error pages, security headers."""
    if not is_ui_request(request):
        return await handler(request)
    response = await _answer(request, handler)
    response.headers.update(HEADERS)
    if request.path.startswith(STATIC_PREFIX) and response.status == 200:
        response.headers["Cache-Control"] = STATIC_CACHE
    else:
        response.headers["Cache-Control"] = PAGE_CACHE
    return response


def _redirect(location: str, status: int = 303, cookies: Any = None) -> web.Response:
    response = web.Response(status=status, headers={"Location": location})
    if cookies:
        response.cookies.update(cookies)
    return response


#: What a browser says of a request's origin (``Sec-Fetch-Site``) when another site's
#: page sent it: the dashboard's forms (sign in, sign out) are only its own.
_FOREIGN = ("cross-site", "same-site")


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    session = request.app[SESSION]
    if request.method == "POST" and request.headers.get("Sec-Fetch-Site") in _FOREIGN:
        return _error_page(
            request, 403, "Forbidden", ["The dashboard's forms are sent from its own pages."]
        )
    if (
        request.path != "/"
        and not request.path.startswith(STATIC_PREFIX)
        and request.path not in _OPEN
        and not session.allows(request)
    ):
        target = request.path_qs if request.method == "GET" else "/ui/"
        return _redirect("/ui/login?next=" + quote(target, safe=""))
    try:
        return await handler(request)
    except BadParameter as exc:
        return _error_page(request, 400, "Bad request", [str(exc)])
    except ValidationFailed as exc:
        return _error_page(request, 400, "Bad request", _validation_messages(exc))
    except StorageUnavailable as exc:
        return _error_page(request, 503, "Database busy", [f"{exc}; try again shortly."])
    except NotOnThisBackend as exc:
        return _error_page(request, 501, "Not available", [str(exc.detail)])
    except TooManyGroups as exc:  # more job types in the window than a summary holds
        return _error_page(
            request, 422, "Too much to summarise", [str(exc), "The runs list still works."]
        )
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect (a login, the root)
            return _redirect(exc.headers["Location"], exc.status, exc.cookies)
        if exc.status == 404:
            reason = exc.reason if exc.reason != "Not Found" else "No such page."
            return _error_page(request, 404, "Not found", [reason])
        return _error_page(request, exc.status, exc.reason or "Error", [exc.reason or "Error"])
    except ApiError as exc:
        return _error_page(request, exc.status, "Error", [str(exc.detail)])
    except Exception:
        log.exception("ui_unhandled_error", path=request.path)
        return _error_page(request, 500, "Internal error", ["Internal error; see the server log."])


async def root(request: web.Request) -> web.StreamResponse:
    """``/``: a browser goes to the dashboard; anyone else gets the 404 as before."""
    if request.method in ("GET", "HEAD") and wants_html(request):
        raise web.HTTPFound("/ui/")
    raise web.HTTPNotFound()


def setup_ui(app: web.Application, config: ServerConfig) -> None:
    """Templates, routes and the session of the dashboard (the middleware is added by
    the app factory, after the API's auth)."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        filters=FILTERS,
    )
    env.filters["ago"] = ago
    env.globals.update(SHAPES=STATUS_SHAPES, q=query, WINDOWS=tuple(WINDOWS))
    app[SESSION] = Session(
        config.auth_token if config.auth_enabled else None,
        protect_reads=config.auth_protect_reads,
        tls=config.tls_cert_file is not None,
        lifetime_s=config.ui_session_hours * 3600.0,
    )
    app.router.add_route("*", "/", root)  # every method: 404 as before, but a browser's GET
    for module in (login, pages, fleet):
        app.add_routes(module.routes)
    app.router.add_static(STATIC_ROUTE, _HERE / "static")
