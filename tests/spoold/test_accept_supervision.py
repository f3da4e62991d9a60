"""The accept thread under faults, through HTTP: a failing group is answered 503 and the
thread goes on; a dead thread makes every write fail fast with 503 and /health unhealthy.

Faults are injected by making the real runs index or spool raise once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from ports import free_port

from spoold.app import create_app
from spoold.config import SpooldConfig
from spoold.spool import Spool
from spoold.state.runs_index import RunsIndex

#: A hang shows up as a timeout here instead of blocking the suite.
PROMPT_S = 5.0


class ThreadKiller(BaseException):
    """Not an Exception: what per-group error handling cannot catch (like SystemExit)."""


def _dead_upstream() -> str:
    return f"http://127.0.0.1:{free_port()}"


def _run() -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    return {
        "event_id": event_id,
        "run_id": f"run-{event_id[:8]}",
        "agent_name": "supervised-agent",
        "job_type": "supervised-job",
        "start_time": "2026-01-12T10:30:00Z",
    }


def raise_once(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str, error: BaseException
) -> list[int]:
    """Make cls.name raise error on its next call only; returns a one-item call counter."""
    original: Callable[..., Any] = getattr(cls, name)
    raised = [0]

    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not raised[0]:
            raised[0] = 1
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, patched)
    return raised


@pytest.fixture
async def sidecar(aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    config = SpooldConfig(
        spool_dir=tmp_path / "spool",
        upstream_url=_dead_upstream(),
        min_free_disk_mb=0,
        shutdown_deadline_s=0.2,
        backoff_base_s=0.05,
        backoff_cap_s=0.1,
        group_window_ms=1.0,
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return client


async def _post(client: TestClient[Any, Any], run: dict[str, Any]) -> tuple[int, Any, str | None]:
    async def send() -> tuple[int, Any, str | None]:
        async with client.post("/api/v1/runs", json=run) as response:
            return response.status, await response.json(), response.headers.get("Retry-After")

    return await asyncio.wait_for(send(), PROMPT_S)


async def _health(client: TestClient[Any, Any]) -> dict[str, Any]:
    async with client.get("/health") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_a_failing_group_gets_503_and_the_next_group_is_accepted(
    sidecar: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index fails mid-group and so does its rollback (a disk I/O error): that group is
    answered 503 with Retry-After, the thread lives on, later writes are accepted, and the
    refused run can be sent again (nothing of it was promised)."""
    record, rollback = RunsIndex.record_group, RunsIndex.rollback
    faults = {"record": 1, "rollback": 0}

    def failing_record(self: RunsIndex, *args: Any, **kwargs: Any) -> Any:
        if faults["record"]:
            faults["record"], faults["rollback"] = 0, 1  # the rollback that follows fails too
            raise sqlite3.OperationalError("disk I/O error")
        return record(self, *args, **kwargs)

    def failing_rollback(self: RunsIndex) -> None:
        if faults["rollback"]:
            faults["rollback"] = 0
            raise sqlite3.OperationalError("disk I/O error")
        rollback(self)

    monkeypatch.setattr(RunsIndex, "record_group", failing_record)
    monkeypatch.setattr(RunsIndex, "rollback", failing_rollback)
    refused = _run()
    status, body, retry_after = await _post(sidecar, refused)
    assert status == 503, body
    assert retry_after is not None
    assert int(retry_after) > 0
    assert set(body) >= {"detail", "error"}
    assert "Traceback" not in str(body)

    later = _run()
    assert (await _post(sidecar, later))[:2] == (201, {**_created(later)})
    assert (await _post(sidecar, refused))[:2] == (201, {**_created(refused)})
    health = await _health(sidecar)
    assert not any("accept thread" in reason for reason in health["reasons"])
    assert health["counters"]["accepted"] == 2


def _created(run: dict[str, Any]) -> dict[str, Any]:
    return {"status": "created", "event_id": run["event_id"], "run_id": run["run_id"]}


async def test_a_dead_accept_thread_refuses_writes_fast_and_health_says_unhealthy(
    sidecar: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool raises something no handler catches, killing the accept thread: the writes
    waiting then and every later write get 503 promptly (never a hang), and /health reports
    the dead thread as unhealthy with its reason."""
    raise_once(monkeypatch, Spool, "put_encoded", ThreadKiller("injected"))
    runs = [_run() for _ in range(8)]
    answers = await asyncio.gather(*(_post(sidecar, run) for run in runs))
    assert {status for status, _, _ in answers} == {503}, answers
    assert all(retry_after is not None for _, _, retry_after in answers)

    status, body, retry_after = await _post(sidecar, _run())
    assert status == 503
    assert "accept thread" in body["detail"]
    assert retry_after is not None

    async with sidecar.patch(
        f"/api/v1/runs/{runs[0]['event_id']}", json={"status": "success"}
    ) as response:
        assert response.status in (404, 503)  # unknown run (asked the server) or refused

    health = await _health(sidecar)
    assert health["status"] == "unhealthy"
    assert any(
        "accept thread" in reason and "ThreadKiller" in reason for reason in health["reasons"]
    ), health["reasons"]
    assert health["counters"]["accepted"] == 0
