"""Prometheus metrics, served on ``/metrics`` by content negotiation.

A scraper (``Accept`` naming ``text/plain`` or ``openmetrics``) gets the text
exposition; every other client — the guide's JSON clients send ``*/*`` or
``application/json`` — keeps getting the guide's JSON. Each app owns its own
registry. Labels come from fixed sets: routes are the router's patterns (or
"unmatched"), never paths or event ids; methods and statuses outside known
sets are "other"; agent names never become labels.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
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

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answer. ``route`` is the router's pattern (or "unmatched"), never the
        path; method and status are mapped onto fixed sets, so no client can grow the
        label set (a method "FOO<script>" is counted as "other")."""
        self.requests.labels(route, method_label(method), status_label(status)).inc()
        self.latency.labels(route).observe(seconds)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http = HttpMetrics(self.registry, "telemetry")
        self.write_batch_size = Histogram(
            "telemetry_db_write_batch_size",
            "Operations committed per write transaction",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.write_seconds = Histogram(
            "telemetry_db_write_transaction_seconds",
            "Duration of a write transaction, commit included",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.db_size = Gauge(
            "telemetry_db_size_bytes", "Size of the SQLite database", registry=self.registry
        )
        self.runs = Gauge(
            "telemetry_runs", "Stored runs by status", ["status"], registry=self.registry
        )
        self.total_runs = Gauge(
            "telemetry_runs_total_stored", "Stored runs", registry=self.registry
        )
        self.reaped_runs = Gauge(
            "telemetry_runs_reaped",
            "Stored runs the stale-run reaper marked timeout (and no agent finished since)",
            registry=self.registry,
        )
        self.reaped = Counter(
            "telemetry_reaper_reaped_runs",
            "Runs the stale-run reaper marked timeout since the server started",
            registry=self.registry,
        )
        self._reaped_seen = 0
        self.prune_passes = Counter(
            "telemetry_prune_passes", "Prune passes completed", registry=self.registry
        )
        self.pruned_runs = Counter(
            "telemetry_pruned_runs",
            "Runs deleted by retention, by status",
            ["status"],
            registry=self.registry,
        )
        self.vacuumed_pages = Counter(
            "telemetry_vacuumed_pages",
            "Free pages given back to the file system after prunes",
            registry=self.registry,
        )
        self.exports_active = Gauge(
            "telemetry_exports_active",
            "Exports streaming now (each holds a read transaction)",
            registry=self.registry,
        )
        self.exports = Counter(
            "telemetry_exports",
            "Exports ended, by outcome (complete, client_gone, storage_error, cancelled)",
            ["outcome"],
            registry=self.registry,
        )
        self.prune_max_batch_seconds = Gauge(
            "telemetry_prune_max_batch_seconds",
            "Longest writer hold of one delete batch in the last prune pass",
            registry=self.registry,
        )

    def observe_reaped(self, stored: int, since_start: int) -> None:
        """Bring the reaper's figures up to date (at scrape time; both O(1))."""
        self.reaped_runs.set(stored)
        if since_start > self._reaped_seen:
            self.reaped.inc(since_start - self._reaped_seen)
            self._reaped_seen = since_start

    def observe_write_group(self, operations: int, seconds: float) -> None:
        self.write_batch_size.observe(operations)
        self.write_seconds.observe(seconds)
