"""Prometheus metrics of both daemons, parsed with prometheus-client and checked against the work done."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app as create_server
from server.config import ServerConfig
from spoold.app import create_app as create_sidecar
from spoold.config import SpooldConfig

SCRAPER_ACCEPT = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
RUNS = 12


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def run(i: int) -> dict[str, Any]:
    return {
        "event_id": f"prom-{i}",
        "run_id": f"r{i}",
        "agent_name": "prom-agent",
        "job_type": "j",
        "start_time": "2026-01-12T10:30:00Z",
    }


async def test_metrics_count_the_work_done(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Accepted, forwarded, rejected and stored counts on /metrics match what was sent; JSON stays JSON."""
    server = await aiohttp_server(create_server(ServerConfig(db_path=tmp_path / "s.sqlite")))
    sidecar = await aiohttp_client(
        create_sidecar(
            SpooldConfig(spool_dir=tmp_path / "spool", upstream_url=str(server.make_url("")))
        )
    )
    for i in range(RUNS):
        assert (await sidecar.post("/api/v1/runs", json=run(i))).status == 201
    for _ in range(2):
        assert (await sidecar.post("/api/v1/runs", json={"event_id": "x"})).status == 422
    for _ in range(200):  # bounded wait for the drain
        health = await (await sidecar.get("/health")).json()
        if health["counters"]["forwarded"] == RUNS and health["spool"]["depth"] == 0:
            break
        await asyncio.sleep(0.05)

    reply = await sidecar.get("/metrics", headers={"Accept": SCRAPER_ACCEPT})
    assert reply.status == 200
    assert "openmetrics" in reply.headers["Content-Type"]
    side = samples(await reply.text())
    assert side[("spoold_accepted_total", ())] == RUNS
    assert side[("spoold_forwarded_total", ())] == RUNS
    assert side[("spoold_queue_operations", ())] == 0
    assert side[("spoold_rejected_total", (("reason", "invalid"),))] == 2
    assert side[("spoold_upstream_up", ())] == 1
    assert side[("spoold_spool_commit_seconds_count", ())] >= 1
    assert side[("spoold_forward_batch_operations_sum", ())] == RUNS
    created = (("method", "POST"), ("route", "/api/v1/runs"), ("status", "201"))
    assert side[("spoold_http_requests_total", created)] == RUNS

    async with sidecar.session.get(
        server.make_url("/metrics"), headers={"Accept": "text/plain;version=0.0.4"}
    ) as central:
        assert central.headers["Content-Type"].startswith("text/plain")
        stored = samples(await central.text())
    assert stored[("telemetry_runs", (("status", "running"),))] == RUNS
    assert stored[("telemetry_runs_total_stored", ())] == RUNS
    assert stored[("telemetry_db_write_batch_size_count", ())] >= 1
    assert stored[("telemetry_db_size_bytes", ())] > 0
    batch = (("method", "POST"), ("route", "/api/v1/runs/batch"), ("status", "200"))
    assert stored[("telemetry_http_requests_total", batch)] >= 1

    json_metrics = await (await sidecar.get("/metrics")).json()  # proxied guide JSON
    assert json_metrics["total_runs"] == RUNS
