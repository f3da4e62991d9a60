"""JSON responses, encoded the one way both daemons answer (the contract's codec)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.contract.codec import dumps


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json")
