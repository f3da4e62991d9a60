"""Read endpoints: proxied to the server, with read-your-writes for runs still queued here."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from server.contract.errors import ServiceUnavailable, UpstreamTimeout, retry_after
from server.contract.run_record import unstored_run, with_urls
from server.contract.urls import build_commit_url, build_repo_url
from server.edge.prometheus import exposition, wants_prometheus
from server.edge.requests import event_id_of
from server.edge.responses import json_response
from spoold.http.prometheus import SIDECAR_METRICS
from spoold.http.state import SIDECAR, Sidecar
from spoold.state.runs_index import KnownRun
from spoold.upstream.client import Reply, UpstreamUnavailable, run_path

routes = web.RouteTableDef()

LOCAL_SOURCE_HEADER = "X-Spoold-Source"


async def proxy(sidecar: Sidecar, request: web.Request, path: str) -> Reply:
    """Forward a read with the caller's own credentials (never the fleet token);
    503 if the server is unreachable, 504 if it is too slow."""
    try:
        return await sidecar.client.read(
            path, query=request.query, authorization=request.headers.get("Authorization")
        )
    except UpstreamUnavailable as exc:
        raise proxy_failure(exc) from exc


def proxy_failure(exc: UpstreamUnavailable) -> UpstreamTimeout | ServiceUnavailable:
    """504 if the server is too slow, 503 if it is unreachable."""
    if exc.timeout:
        return UpstreamTimeout(
            "the telemetry server did not answer in time; writes are still accepted and queued"
        )
    return ServiceUnavailable(
        "the telemetry server is unreachable; writes are still accepted and queued, "
        "reads need the server",
        headers=retry_after(5),
    )


def relay(reply: Reply) -> web.Response:
    response = web.Response(body=reply.body, status=reply.status, content_type=reply.content_type)
    response.headers.update(reply.headers)
    return response


async def _known(sidecar: Sidecar, event_id: str) -> KnownRun | None:
    return await asyncio.to_thread(sidecar.reader_index.get, event_id)


@routes.get("/api/v1/runs/{event_id}")
async def get_run(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    event_id = event_id_of(request)
    known = await _known(sidecar, event_id)
    if known is not None and known.pending and known.has_create and known.complete:
        response = json_response(unstored_run(known.snapshot))
        response.headers[LOCAL_SOURCE_HEADER] = "local-queue"
        return response
    try:
        reply = await proxy(sidecar, request, run_path(event_id))
    except (ServiceUnavailable, UpstreamTimeout):
        # Only a run whose whole snapshot is kept (one with dead letters): a delivered run
        # keeps its run_id, not its fields, and is answered by the server or not at all.
        if known is not None and known.has_create and known.complete:
            response = json_response(unstored_run(known.snapshot))
            response.headers[LOCAL_SOURCE_HEADER] = "local-index"
            return response
        raise
    if known is not None and known.pending and reply.status == 200:
        run = _the_run(reply, event_id)
        run.update(known.snapshot)  # updates still queued here are newer than the server's copy
        response = json_response(with_urls(run))
        response.headers[LOCAL_SOURCE_HEADER] = "server+local-queue"
        return response
    return relay(reply)


def _the_run(reply: Reply, event_id: str) -> dict[str, Any]:
    """The server's copy of this run from a 200, or 503: a 200 that is not this run (another
    service, a proxy's page) must not be merged with the queued updates into a run."""
    try:
        run = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        run = None
    if not isinstance(run, dict) or run.get("event_id") != event_id:
        raise ServiceUnavailable(
            "the telemetry server's answer was not this run (is SPOOLD_UPSTREAM_URL the "
            "telemetry server?); writes are still accepted and queued",
            headers=retry_after(5),
        )
    return run


async def _url_answer(request: web.Request, kind: str) -> web.Response:
    sidecar = request.app[SIDECAR]
    event_id = event_id_of(request)
    known = await _known(sidecar, event_id)
    if known is not None and known.pending and known.has_create and known.complete:
        snapshot = known.snapshot
        if kind == "commit-url":
            body = {
                "event_id": event_id,
                "commit_url": build_commit_url(
                    snapshot.get("git_repo"), snapshot.get("git_commit_hash")
                ),
                "git_repo": snapshot.get("git_repo"),
                "git_commit_hash": snapshot.get("git_commit_hash"),
            }
        else:
            body = {
                "event_id": event_id,
                "repo_url": build_repo_url(snapshot.get("git_repo")),
                "git_repo": snapshot.get("git_repo"),
            }
        return json_response(body)
    return relay(await proxy(sidecar, request, run_path(event_id, kind)))


@routes.get("/api/v1/runs/{event_id}/commit-url")
async def commit_url(request: web.Request) -> web.Response:
    return await _url_answer(request, "commit-url")


@routes.get("/api/v1/runs/{event_id}/repo-url")
async def repo_url(request: web.Request) -> web.Response:
    return await _url_answer(request, "repo-url")


@routes.get("/api/v1/runs")
async def list_runs(request: web.Request) -> web.Response:
    return relay(await proxy(request.app[SIDECAR], request, "/api/v1/runs"))


@routes.get("/api/v1/metadata")
async def metadata(request: web.Request) -> web.Response:
    return relay(await proxy(request.app[SIDECAR], request, "/api/v1/metadata"))


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    return relay(await proxy(request.app[SIDECAR], request, "/api/v1/stats"))


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Scrapers get spoold's own Prometheus metrics; JSON clients the server's guide metrics."""
    if wants_prometheus(request):
        prometheus = request.app[SIDECAR_METRICS]
        await prometheus.refresh(request.app[SIDECAR])
        return exposition(request, prometheus.registry)
    return relay(await proxy(request.app[SIDECAR], request, "/metrics"))
