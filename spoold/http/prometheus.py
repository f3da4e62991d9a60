"""spoold's Prometheus metrics: queue, upstream, accounting counters, latencies.

Histograms are observed where the work happens (the accept thread's commits,
the drainer's batches); everything else is read from the live objects when a
scraper asks, so a scrape costs two small SQLite reads and nothing on the
accept path. Labels are bounded (reasons and causes are small fixed sets).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.edge.prometheus import LATENCY_BUCKETS, SIZE_BUCKETS, HttpMetrics
from spoold.http.state import Sidecar
from spoold.upstream.status import UpstreamStatus

#: Write-route answers that mean "not accepted", by reason.
REJECTION_REASONS = {
    400: "malformed",
    404: "unknown_run",
    413: "too_large",
    422: "invalid",
    503: "spool_unavailable",
}
_WRITE_METHODS = frozenset({"POST", "PATCH"})


class _SidecarCollector(Collector):
    """Reads a snapshot taken by the handler just before the scrape."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] | None = None

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        if snap is None:
            return
        stats, drain, upstream = snap["spool"], snap["drain"], snap["upstream"]
        counters = snap["counters"]

        def gauge(name: str, help_text: str, value: float | None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_text, value=float(value or 0))

        yield gauge("spoold_queue_operations", "Operations waiting in the spool", stats.depth_ops)
        yield gauge("spoold_queue_bytes", "Serialised bytes waiting in the spool", stats.bytes)
        yield gauge(
            "spoold_queue_capacity_bytes", "Spool cap (SPOOLD_MAX_SPOOL_MB)", stats.capacity_bytes
        )
        yield gauge(
            "spoold_queue_oldest_age_seconds",
            "Age of the oldest queued operation",
            stats.oldest_age_s,
        )
        yield gauge("spoold_spool_file_bytes", "Spool file size on disk", stats.file_bytes)
        yield gauge(
            "spoold_inflight_batches", "Batches being sent upstream", upstream.in_flight_batches
        )
        yield gauge("spoold_dead_letters", "Records in the dead-letter store", snap["dead_letters"])
        yield gauge(
            "spoold_disk_free_bytes", "Free bytes on the spool's filesystem", stats.disk_free_bytes
        )
        yield gauge(
            "spoold_upstream_up",
            "1 if the server answered the last attempt",
            1 if upstream.reachable else 0,
        )
        yield gauge(
            "spoold_upstream_auth_failing",
            "1 while the server refuses our token",
            1 if upstream.auth_failing else 0,
        )
        yield gauge(
            "spoold_last_successful_drain_timestamp_seconds",
            "Unix time of the last batch the server accepted",
            snap["last_success_unix"],
        )
        for name, help_text, value in (
            ("spoold_accepted", "Operations accepted and spooled", counters.get("accepted", 0)),
            (
                "spoold_forwarded",
                "Operations the server acknowledged",
                counters.get("forwarded", 0),
            ),
            (
                "spoold_duplicates_answered",
                "Creates answered 'duplicate' locally",
                counters.get("duplicates", 0),
            ),
            (
                "spoold_duplicates_sent",
                "Snapshots the server found unchanged (replays)",
                drain.duplicates_sent,
            ),
            (
                "spoold_drain_rests_skipped",
                "Drain rounds not followed by their rest: agents outran the rested drain",
                drain.rests_skipped,
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=float(value))
        dead = CounterMetricFamily(
            "spoold_dead_lettered", "Operations moved to dead letters", labels=["reason"]
        )
        for reason, value in drain.dead_lettered_by_reason.items():
            dead.add_metric([reason], float(value))
        yield dead
        recovered = CounterMetricFamily(
            "spoold_storage_recovered",
            "Damaged local files set aside and replaced (runs index rebuilt, fresh store)",
            labels=["file"],
        )
        for file, value in snap["recoveries"].by_file().items():
            recovered.add_metric([file], float(value))
        yield recovered
        yield from _per_upstream(upstream)
        retries = CounterMetricFamily("spoold_retries", "Upstream batch retries", labels=["cause"])
        for cause, value in upstream.retries.items():
            retries.add_metric([cause], float(value))
        yield retries


#: Labels of the per-upstream gauges: the position in SPOOLD_UPSTREAM_URL (0 = preferred)
#: and the URL without credentials; both bounded by the operator's list.
UPSTREAM_LABELS = ["upstream", "url"]


def _per_upstream(upstream: UpstreamStatus) -> Iterator[GaugeMetricFamily]:
    """One series per upstream of the list: up, current, failures in a row, last success."""
    selection = upstream.selection
    if selection is None:
        return
    families = {
        "up": GaugeMetricFamily(
            "spoold_upstreams_up",
            "1 if this upstream gave the server's answer to its last batch or probe",
            labels=UPSTREAM_LABELS,
        ),
        "current": GaugeMetricFamily(
            "spoold_upstreams_current",
            "1 for the upstream batches go to now",
            labels=UPSTREAM_LABELS,
        ),
        "failures": GaugeMetricFamily(
            "spoold_upstreams_consecutive_failures",
            "Attempts in a row this upstream did not answer as the server",
            labels=UPSTREAM_LABELS,
        ),
        "success": GaugeMetricFamily(
            "spoold_upstreams_last_success_timestamp_seconds",
            "Unix time this upstream last took a batch (0: never)",
            labels=UPSTREAM_LABELS,
        ),
    }
    current = selection.current
    for member in selection.members:
        labels = [str(member.index), member.url]
        families["up"].add_metric(labels, 1.0 if member.state == "up" else 0.0)
        families["current"].add_metric(labels, 1.0 if member.index == current else 0.0)
        families["failures"].add_metric(labels, float(member.failures))
        families["success"].add_metric(labels, float(member.last_success_unix or 0))
    yield from families.values()


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = HttpMetrics(self.registry, "spoold")
        self.commit_seconds = Histogram(
            "spoold_spool_commit_seconds",
            "Accept-path group commit (spool fsync) latency",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_operations = Histogram(
            "spoold_spool_commit_operations",
            "Operations per spool commit",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_operations = Histogram(
            "spoold_forward_batch_operations",
            "Operations per forwarding round",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.forward_seconds = Histogram(
            "spoold_forward_seconds",
            "Time to forward a round (retries included)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "spoold_rejected",
            "Write requests not accepted, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.last_refusal: float | None = None
        self._collector = _SidecarCollector()
        self.registry.register(self._collector)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http.observe(route, method, status, seconds)
        if method in _WRITE_METHODS and status >= 400:
            self.rejected.labels(REJECTION_REASONS.get(status, "other")).inc()
            if status == 503:
                self.last_refusal = time.monotonic()

    def refused_within(self, seconds: float) -> bool:
        """Whether a write was refused with 503 in the last ``seconds``."""
        return self.last_refusal is not None and time.monotonic() - self.last_refusal < seconds

    def observe_commit(self, operations: int, seconds: float) -> None:
        self.commit_operations.observe(operations)
        self.commit_seconds.observe(seconds)

    def observe_forward(self, operations: int, seconds: float) -> None:
        self.batch_operations.observe(operations)
        self.forward_seconds.observe(seconds)

    async def refresh(self, sidecar: Sidecar) -> None:
        """Take the snapshot the collector reports (one small read, off the loop)."""
        dead_letters = await asyncio.to_thread(sidecar.dead_letters.count)
        counters = asdict(sidecar.ledger.snapshot())
        self._collector.snapshot = {
            "spool": sidecar.spool.stats(),
            "drain": sidecar.drainer.stats,
            "upstream": sidecar.upstream,
            "counters": counters,
            "dead_letters": dead_letters,
            "recoveries": sidecar.recoveries,
            "last_success_unix": sidecar.upstream.last_success_unix,
        }


SIDECAR_METRICS: web.AppKey[SidecarMetrics] = web.AppKey("sidecar_metrics", SidecarMetrics)
