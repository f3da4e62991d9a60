"""The API documentation pages: ``/openapi.json``, Swagger UI at ``/docs``, ReDoc at ``/redoc``.

Hosts running the server may be offline, so no page loads anything from a CDN:
every script and stylesheet is a file of the installed ``openapi-ui-bundles``
package (Swagger UI and ReDoc standalone builds), served under
``/docs/assets/`` from a fixed allow-list of names. Pages use relative URLs so
they keep working behind a reverse proxy that adds a path prefix.
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from server.contract import codec
from server.edge.files import listed_files

ASSETS_PATH = "/docs/assets"
_PACKAGE = "openapi_ui_bundles"
_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"
# URL name -> (file inside the package, content type). Only these are served.
_ASSETS: dict[str, tuple[str, str]] = {
    "swagger-ui-bundle.js": ("swagger_ui/vendor/swagger-ui-bundle.js", _JS),
    "swagger-ui.css": ("swagger_ui/vendor/swagger-ui.css", _CSS),
    "favicon-32x32.png": ("swagger_ui/vendor/favicon-32x32.png", "image/png"),
    "redoc.standalone.js": ("redoc/vendor/redoc.standalone.js", _JS),
}
# Versions change only with the installed package, i.e. with a restart.
_ASSET_HEADERS = {"Cache-Control": "public, max-age=86400"}
# The browser itself refuses any third-party load (ReDoc would fetch its logo from
# a CDN); inline code and blob: workers are what the two bundles need.
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; "
    "script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:",
}

_SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - Swagger UI</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
</script>
</body>
</html>
"""

_REDOC_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - ReDoc</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<redoc spec-url="openapi.json"></redoc>
<script src="{assets}/redoc.standalone.js"></script>
</body>
</html>
"""


def docs_routes(spec: dict[str, Any]) -> list[web.RouteDef]:
    """Routes serving ``spec`` and the pages that render it; call once at app start.

    Raises RuntimeError when the UI package is missing or incomplete, so a
    broken install stops the server at start rather than at the first visit.
    """
    body = codec.dumps(spec)
    title = html.escape(str(spec.get("info", {}).get("title", "API")))
    assets = _locate_assets()
    relative = ASSETS_PATH.lstrip("/")
    swagger = _SWAGGER_PAGE.format(title=title, assets=relative)
    redoc = _REDOC_PAGE.format(title=title, assets=relative)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def swagger_page(request: web.Request) -> web.Response:
        return web.Response(text=swagger, content_type="text/html", headers=_PAGE_HEADERS)

    async def redoc_page(request: web.Request) -> web.Response:
        return web.Response(text=redoc, content_type="text/html", headers=_PAGE_HEADERS)

    asset = listed_files(assets, _ASSET_HEADERS)

    return [
        web.get("/openapi.json", openapi_json),
        web.get("/docs", swagger_page),
        web.get("/redoc", redoc_page),
        # `{name}` never matches a "/", and only allow-listed names map to a file.
        web.get(ASSETS_PATH + "/{name}", asset),
    ]


def _locate_assets() -> dict[str, tuple[Path, str]]:
    """Absolute paths of the allow-listed asset files of the installed package."""
    try:
        root = resources.files(_PACKAGE)
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"API docs need the {_PACKAGE!r} package installed") from exc
    located: dict[str, tuple[Path, str]] = {}
    for name, (relative, content_type) in _ASSETS.items():
        resource = root.joinpath(*relative.split("/"))
        # FileResponse needs a real file; a zipped install would need extraction.
        if not isinstance(resource, Path) or not resource.is_file():
            raise RuntimeError(f"API docs asset missing from {_PACKAGE!r}: {relative}")
        located[name] = (resource, content_type)
    return located
