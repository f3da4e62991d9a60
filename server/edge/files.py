"""Serving a fixed set of files shipped in a package, by name: only allow-listed names map
to a path (no path from the request ever reaches the file system)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web

FileHandler = Callable[[web.Request], Awaitable[web.FileResponse]]


def listed_files(files: Mapping[str, tuple[Path, str]], headers: Mapping[str, str]) -> FileHandler:
    """A handler for a route with a ``{name}`` part: ``files`` maps a name to its path and
    content type; any other name is a 404."""

    async def serve(request: web.Request) -> web.FileResponse:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        path, content_type = found
        return web.FileResponse(path, headers={**headers, "Content-Type": content_type})

    return serve
