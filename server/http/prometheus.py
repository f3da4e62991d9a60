"""The central server's Prometheus metrics: its HTTP requests, writer, database and prunes.

Content negotiation and the request instrumentation are shared (``server.edge.prometheus``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.edge.prometheus import LATENCY_BUCKETS, SIZE_BUCKETS, HttpMetrics


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
            "Exports ended, by outcome (complete, client_gone, client_stalled, storage_error,"
            " cancelled)",
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
