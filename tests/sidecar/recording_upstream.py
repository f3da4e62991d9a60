"""A recording stand-in for the central server, speaking the stale-runs contract.

It answers ``POST /api/v1/runs/batch?mode=upsert`` as the server does (counts that add
up, an item error for an update or heartbeat of a run it does not know), ``GET`` of a
run it knows (404 with the server's error JSON otherwise) and any other ``GET`` with
``[]``; it records every request with its headers, arrival time and body. ``down``
answers 503 (the server's error JSON), ``foreign`` answers 200 with a body that is
not a batch answer (another service behind the URL).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float
    wall: float
    answered: int = 0


@dataclass
class RecordingUpstream:
    url: str = ""
    down: bool = False
    foreign: bool = False
    #: Batch posts only answer 503 (lookups still answered).
    batches_down: bool = False
    #: Seconds a lookup of a run waits before its answer.
    lookup_delay_s: float = 0.0
    known: set[str] = field(default_factory=set)
    requests: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    @property
    def batches(self) -> list[Seen]:
        return [r for r in self.requests if r.path == "/api/v1/runs/batch"]

    def delivered(self) -> list[Seen]:
        return [b for b in self.batches if b.answered == 200 and not self.foreign]

    def items(self, event_id: str | None = None) -> list[dict[str, Any]]:
        """Items of the batches answered 200, in arrival order."""
        return [
            item
            for batch in self.batches
            if batch.answered == 200
            for item in batch.body
            if event_id is None or item["event_id"] == event_id
        ]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        seen = Seen(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            orjson.loads(raw) if raw else None,
            time.monotonic(),
            time.time(),
        )
        self.requests.append(seen)
        if request.method == "GET" and request.path.startswith("/api/v1/runs/"):
            await asyncio.sleep(self.lookup_delay_s)
        response = self._answer(request, seen)
        seen.answered = response.status
        return response

    def _answer(self, request: web.Request, seen: Seen) -> web.Response:
        if self.down:
            return web.json_response(
                {"detail": "down for the test", "error": "service_unavailable"}, status=503
            )
        if request.method == "POST" and request.path == "/api/v1/runs/batch":
            if self.batches_down:
                return web.json_response(
                    {"detail": "batches down for the test", "error": "service_unavailable"},
                    status=503,
                )
            if self.foreign:
                return web.json_response({"ok": True})
            return web.json_response(self._apply(seen.body))
        prefix = "/api/v1/runs/"
        if request.method == "GET" and request.path.startswith(prefix):
            event_id = request.match_info["tail"].split("/", 3)[-1]
            if event_id in self.known:
                return web.json_response({"event_id": event_id, "run_id": f"r-{event_id}"})
            return web.json_response(
                {"detail": f"Run not found: {event_id}", "error": "not_found"}, status=404
            )
        return web.json_response([])

    def _apply(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        inserted = updated = 0
        errors = []
        for index, item in enumerate(items):
            event_id = item["event_id"]
            if "create" in item and event_id not in self.known:
                self.known.add(event_id)
                inserted += 1
                continue
            if event_id not in self.known:
                errors.append({"index": index, "event_id": event_id, "message": "Run not found"})
                continue
            updated += 1
        return {
            "inserted": inserted,
            "updated": updated,
            "duplicates": 0,
            "errors": errors,
            "total": len(items),
        }
