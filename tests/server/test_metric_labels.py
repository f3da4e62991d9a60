"""Prometheus labels of both daemons come from fixed sets, whatever clients send."""

from __future__ import annotations

import asyncio
import random
import string
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.config import ServerConfig
from server.edge.prometheus import HttpMetrics
from server.metric_labels import METHOD_LABELS, STATUS_LABELS
from spoold.app import create_app as create_sidecar_app
from spoold.config import SpooldConfig

PROMETHEUS = {"Accept": "text/plain;version=0.0.4"}
# The HTTP parser refuses most of these itself (400 before any handler); the ones it
# knows (M-SEARCH, PROPFIND, PURGE) reach the app and must still not become labels.
HOSTILE_METHODS = ("FOO<script>", "FOO", "BREW", "get", "M-SEARCH", "PROPFIND", "PURGE")
RANDOM_PATHS = 1000
_ALPHABET = string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@/"


async def raw_request(port: int, method: str, path: str) -> bytes:
    """Send one request line as given (no client-side validation), return the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


def random_paths(seed: int) -> list[str]:
    rng = random.Random(seed)
    prefixes = ("/", "/api/v1/runs/", "/api/v1/", "/docs/", "/metrics/", "/x/")
    return [
        rng.choice(prefixes)
        + "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 40))).lstrip("/")
        for _ in range(RANDOM_PATHS)
    ]


async def label_sets(port: int) -> set[tuple[str, str, str]]:
    """(route, method, status) of every request counter sample the daemon exposes."""
    async with (
        ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics", headers=PROMETHEUS) as response,
    ):
        assert response.status == 200
        text = await response.text()
    labels = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_http_requests_total"):
                labels.add(
                    (sample.labels["route"], sample.labels["method"], sample.labels["status"])
                )
    return labels


async def hammer(port: int) -> None:
    for method in HOSTILE_METHODS:
        for path in ("/health", "/api/v1/runs", "/nowhere"):
            status_line = await raw_request(port, method, path)
            assert status_line.startswith(b"HTTP/1."), status_line
    for path in random_paths(port):
        await raw_request(port, random.choice(("GET", "HEAD", "DELETE", "PUT")), path)


def assert_bounded(labels: set[tuple[str, str, str]], known_routes: set[str]) -> None:
    routes = {route for route, _, _ in labels}
    methods = {method for _, method, _ in labels}
    statuses = {status for _, _, status in labels}
    assert routes <= known_routes | {"unmatched"}, routes - known_routes
    assert methods <= METHOD_LABELS | {"other"}, methods
    assert statuses <= {str(s) for s in STATUS_LABELS} | {"other"}, statuses
    assert not any("<" in "".join(label) for label in labels)
    # 1,000 random paths and odd methods: the label set stays small
    assert len(labels) <= len(known_routes | {"unmatched"}) * 8 * 8, len(labels)


def routes_of(app: Any) -> set[str]:
    return {resource.canonical for resource in app.router.resources()}


async def test_server_labels_stay_in_fixed_sets(tmp_path: Path) -> None:
    """Odd methods and 1,000 random paths against the server: labels stay in fixed sets."""
    app = create_app(ServerConfig(db_path=tmp_path / "t.sqlite", synchronous="OFF"))
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.port is not None
        await hammer(server.port)
        labels = await label_sets(server.port)
    assert ("unmatched", "GET", "404") in labels
    assert any(method == "other" for _, method, _ in labels)  # M-SEARCH etc. got through
    assert_bounded(labels, routes_of(app))


async def test_sidecar_labels_stay_in_fixed_sets(tmp_path: Path) -> None:
    """The same against spoold (its upstream down): labels stay in fixed sets."""
    config = SpooldConfig(
        spool_dir=tmp_path / "spool",
        upstream_url="http://127.0.0.1:9",
        min_free_disk_mb=0,
        shutdown_deadline_s=0.2,
        lookup_timeout_s=0.5,
        upstream_timeout_s=0.5,
        backoff_base_s=0.05,
        backoff_cap_s=0.1,
    )
    app = create_sidecar_app(config)
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.port is not None
        await hammer(server.port)
        labels = await label_sets(server.port)
    assert any(method == "other" for _, method, _ in labels)
    assert_bounded(labels, routes_of(app))


def test_unknown_method_and_status_become_other() -> None:
    """The mapping itself: a hostile method or an unexpected status is "other"."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = HttpMetrics(registry, "t")
    metrics.observe("/health", "FOO<script>", 299, 0.001)
    metrics.observe("/health", "GET", 200, 0.001)
    samples = {
        (s.labels["method"], s.labels["status"])
        for family in registry.collect()
        for s in family.samples
        if s.name == "t_http_requests_total"
    }
    assert samples == {("other", "other"), ("GET", "200")}


def test_spoold_retry_causes_are_a_fixed_set_whatever_the_upstream_answers() -> None:
    """spoold_retries{cause}: an upstream (or whatever sits at its URL) answering any
    5xx-or-stranger status never grows the label set; known statuses keep their name."""
    from spoold.upstream.status import UpstreamStatus

    status = UpstreamStatus(url="http://127.0.0.1:9")
    for code in (*range(500, 1000), 429, 408):
        status.failed(f"HTTP {code}", status=code)
    status.failed("refused", status=0)
    fixed = {f"http_{label}" for label in map(str, STATUS_LABELS)} | {"http_other", "connect"}
    assert set(status.retries) <= fixed
    assert {"http_503", "http_429", "http_other", "connect"} <= set(status.retries)
    assert sum(status.retries.values()) == 500 + 2 + 1
