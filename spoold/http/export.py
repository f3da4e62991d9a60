"""``GET /api/v1/runs/export`` through spoold: relayed as a stream, never buffered whole.

Registered before the run routes (``/api/v1/runs/{event_id}``), as on the server.
Runs still queued here are not in the export (it is the server's snapshot); an
error answer of the server (401, 422, 429, 503) is relayed as it is. Should the
server stop mid-stream, the body is cut short (the connection is closed), as the
server itself does on an error after its 200.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from spoold.http.reads import proxy_failure, relay
from spoold.http.state import SIDECAR
from spoold.upstream.client import Reply, UpstreamUnavailable

routes = web.RouteTableDef()

EXPORT_PATH = "/api/v1/runs/export"
CHUNK_BYTES = 64 * 1024
_RELAYED_HEADERS = ("Content-Type", "Content-Disposition", "Cache-Control")


@routes.get(EXPORT_PATH)
async def export_runs(request: web.Request) -> web.StreamResponse:
    sidecar = request.app[SIDECAR]
    try:
        async with sidecar.client.stream(
            EXPORT_PATH, query=request.query, authorization=request.headers.get("Authorization")
        ) as upstream:
            if upstream.status != 200:  # an error answer: small, relayed whole
                body = await upstream.read()
                headers = {k: v for k, v in upstream.headers.items() if k == "Retry-After"}
                return relay(Reply(upstream.status, body, upstream.content_type, headers))
            response = web.StreamResponse(
                headers={k: upstream.headers[k] for k in _RELAYED_HEADERS if k in upstream.headers}
            )
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError):
                if request.transport is not None:  # the server went away: cut short
                    request.transport.close()
                return response
            await response.write_eof()
            return response
    except UpstreamUnavailable as exc:
        raise proxy_failure(exc) from exc
