"""Prometheus request instrumentation both daemons share, served on ``/metrics`` by negotiation.

A scraper (``Accept`` naming ``text/plain`` or ``openmetrics``) gets the text
exposition; every other client — the guide's JSON clients send ``*/*`` or
``application/json`` — keeps getting the guide's JSON. Each app owns its own
registry. Labels come from fixed sets: routes are the router's patterns (or
"unmatched"), never paths or event ids; methods and statuses outside known
sets are "other"; agent names never become labels.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

from server.metric_labels import method_label, status_label

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def wants_prometheus(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "").lower()
    return "openmetrics" in accept or "text/plain" in accept


def exposition(request: web.Request, registry: CollectorRegistry) -> web.Response:
    """The registry in the format the scraper asked for."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = web.Response(body=encoder(registry))
    response.headers["Content-Type"] = content_type
    return response


class HttpMetrics:
    """Requests by route, method and status, and their latency."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.requests = Counter(
            f"{prefix}_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{prefix}_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Each label set's two children, so a request costs one dict lookup, not two
        # ``labels`` calls. Bounded as the label sets are (routes, fixed methods/statuses).
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answer. ``route`` is the router's pattern (or "unmatched"), never the
        path; method and status are mapped onto fixed sets, so no client can grow the
        label set (a method "FOO<script>" is counted as "other")."""
        key = (route, method_label(method), status_label(status))
        children = self._children.get(key)
        if children is None:  # once per label set: ``labels`` locks and validates per call
            children = (self.requests.labels(*key), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
