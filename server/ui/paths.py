"""Which requests the dashboard answers itself (kept apart: the API's middlewares ask)."""

from __future__ import annotations

from aiohttp import web


def wants_html(request: web.Request) -> bool:
    """A browser's navigation (its Accept names text/html); API clients keep their answer."""
    return "text/html" in request.headers.get("Accept", "")


def is_ui_path(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


def is_ui_request(request: web.Request) -> bool:
    """Dashboard pages (their own login, not the API's bearer token), and a browser's
    ``/`` (a redirect to them: no data)."""
    return is_ui_path(request.path) or (request.path == "/" and wants_html(request))
