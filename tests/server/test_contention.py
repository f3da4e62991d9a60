"""Lock contention from another process becomes 503 with Retry-After, never 500."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from server.app import create_app
from server.config import ServerConfig

RUN = {
    "event_id": "contended-1",
    "run_id": "r",
    "agent_name": "a",
    "job_type": "j",
    "start_time": "2026-01-12T10:30:00Z",
}


async def test_write_lock_held_elsewhere_gives_503_and_health_still_answers(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """A second connection holding the write lock: writes 503 + Retry-After, /health 200, then recovery."""
    db_path = tmp_path / "t.sqlite"
    client = await aiohttp_client(create_app(ServerConfig(db_path=db_path, busy_timeout_ms=300)))
    assert (await client.get("/health")).status == 200  # database created and migrated

    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with capture_logs() as logs:
            write = asyncio.create_task(client.post("/api/v1/runs", json=RUN))
            others = [
                asyncio.create_task(client.post("/api/v1/runs", json={**RUN, "event_id": f"o-{n}"}))
                for n in range(5)
            ]
            await asyncio.sleep(0.05)
            health = await client.get("/health")
            assert health.status == 200
            assert (await health.json())["status"] == "ok"
            blocked = await write
            assert [(await other).status for other in others] == [503] * 5
        assert blocked.status == 503
        assert int(blocked.headers["Retry-After"]) >= 1
        body = await blocked.json()
        assert body["error"] == "service_unavailable"
        assert "Traceback" not in str(body)
        assert "INSERT" not in str(body)
        # the operator's log says which failure it was; the answer does not
        # six 503s of one kind within a second: one line
        [logged] = [entry for entry in logs if entry["event"] == "storage_unavailable"]
        assert logged["detail"] == body["detail"]
        assert logged["log_level"] == "warning"
        assert logged["cause"] == "OperationalError"
        assert logged["code"] == "SQLITE_BUSY"
    finally:
        other.execute("ROLLBACK")
        other.close()

    retried = await client.post("/api/v1/runs", json=RUN)
    assert retried.status == 201
    assert (await retried.json())["status"] == "created"


async def test_concurrent_creates_share_transactions(tmp_path: Path, aiohttp_client: Any) -> None:
    """Concurrent creates are group-committed: fewer transactions than requests, all stored."""
    app = create_app(ServerConfig(db_path=tmp_path / "t.sqlite"))
    client = await aiohttp_client(app)
    runs = [{**RUN, "event_id": f"e-{i}"} for i in range(200)]
    responses = await asyncio.gather(*(client.post("/api/v1/runs", json=run) for run in runs))
    assert all(response.status == 201 for response in responses)
    metrics = await (await client.get("/metrics")).json()
    assert metrics["total_runs"] == 200
    assert metrics["performance"]["write_operations"] == 200
    assert metrics["performance"]["write_transactions"] < 200
