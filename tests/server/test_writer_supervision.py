"""The writer thread is supervised: a failing group fails alone; a dead writer never hangs."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

from server.http.runs import DATABASE
from server.storage import runs
from server.storage.database import Database

PROMPT_S = 5.0  # "promptly": far above a normal answer, far below a hang


class Fatal(BaseException):
    """Not an Exception: escapes every ordinary handler, as a real thread killer would."""


def database_of(api: Any) -> Database:
    return api.client.server.app[DATABASE]


class CommitFails:
    """The writer's real connection, except that the next ``n`` COMMITs raise ``error``
    (a bug or an unexpected fault at the worst moment: after every operation ran)."""

    def __init__(self, conn: sqlite3.Connection, error: BaseException, n: int = 1) -> None:
        self._conn = conn
        self._error = error
        self.remaining = n

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.remaining > 0:
            self.remaining -= 1
            raise self._error
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def fail_next_group(database: Database, error: BaseException) -> CommitFails:
    """Make the real writer raise inside the next group's transaction, once."""
    proxy = CommitFails(database.writer._conn, error)
    database.writer._conn = proxy  # type: ignore[assignment]
    return proxy


async def test_failing_group_answers_503_and_the_next_group_goes_on(api, new_run):
    """One group raises inside its transaction: its requests get 503 + Retry-After (JSON),
    nothing of it is stored, and the next writes are served by the same thread."""
    database = database_of(api)
    proxy = fail_next_group(database, RuntimeError("injected group failure"))
    doomed = new_run()
    reply = await asyncio.wait_for(api.post("/api/v1/runs", json=doomed), PROMPT_S)
    assert reply.status == 503, reply.body
    assert reply.body["error"] == "service_unavailable"
    assert int(reply.headers["Retry-After"]) >= 1
    assert "injected" not in reply.text
    assert proxy.remaining == 0
    assert (await api.get(f"/api/v1/runs/{doomed['event_id']}")).status == 404

    after = new_run()
    await asyncio.wait_for(api.create(after), PROMPT_S)
    retried = await asyncio.wait_for(api.post("/api/v1/runs", json=doomed), PROMPT_S)
    assert retried.status == 201
    assert retried.body["status"] == "created"
    assert (await api.get("/health")).body["status"] == "ok"
    assert database.writer.failure is None
    metrics = (await api.get("/metrics")).body
    assert metrics["total_runs"] == 2
    assert metrics["performance"]["failed_write_transactions"] == 1


async def test_failing_group_fails_every_request_in_it(api, new_run):
    """Concurrent writes grouped with the failing one all get 503, none hangs, none is
    half-stored; writes after it succeed."""
    database = database_of(api)
    fail_next_group(database, RuntimeError("injected"))
    runs = [new_run() for _ in range(20)]
    replies = await asyncio.wait_for(
        asyncio.gather(*(api.post("/api/v1/runs", json=run) for run in runs)), PROMPT_S
    )
    statuses = [reply.status for reply in replies]
    assert set(statuses) <= {201, 503}
    assert 503 in statuses
    for run, reply in zip(runs, replies, strict=True):
        stored = (await api.get(f"/api/v1/runs/{run['event_id']}")).status
        assert stored == (200 if reply.status == 201 else 404)
    assert (await api.post("/api/v1/runs", json=new_run())).status == 201


async def test_observer_failure_never_fails_committed_writes(api, new_run):
    """A broken group observer (metrics) is logged; the committed write still answers 201."""
    database = database_of(api)

    def broken(operations: int, seconds: float) -> None:
        raise ValueError("observer bug")

    database.writer.on_group = broken
    run = new_run()
    reply = await asyncio.wait_for(api.post("/api/v1/runs", json=run), PROMPT_S)
    assert reply.status == 201
    assert (await api.get(f"/api/v1/runs/{run['event_id']}")).status == 200


async def test_dead_writer_answers_503_promptly_and_health_says_why(api, new_run, monkeypatch):
    """If the writer thread dies anyway, the write in flight and every later write get 503
    at once (never a hang), and /health is unhealthy with a reason."""

    def killer(conn: sqlite3.Connection, params: Any) -> bool:
        raise Fatal("thread killer")

    monkeypatch.setattr(runs, "insert_row", killer)
    first = await asyncio.wait_for(api.post("/api/v1/runs", json=new_run()), PROMPT_S)
    assert first.status == 503, first.body
    assert int(first.headers["Retry-After"]) >= 1
    for _ in range(3):
        later = await asyncio.wait_for(api.post("/api/v1/runs", json=new_run()), PROMPT_S)
        assert later.status == 503
        assert "restart" in later.body["detail"]
    patch = await asyncio.wait_for(
        api.patch("/api/v1/runs/anything", json={"status": "success"}), PROMPT_S
    )
    assert patch.status == 503
    batch = await asyncio.wait_for(
        api.post("/api/v1/runs/batch", json=[new_run(), new_run()]), PROMPT_S
    )
    assert batch.status == 503
    health = await asyncio.wait_for(api.get("/health"), PROMPT_S)
    assert health.status == 503
    assert health.body["status"] == "unhealthy"
    assert "writer" in health.body["reason"]
    assert "Fatal" in health.body["reason"]
    # reads still work: the readers do not need the writer
    assert (await api.get("/api/v1/runs")).status == 200


async def test_writes_queued_behind_a_dying_group_are_answered(api, new_run, monkeypatch):
    """Writes waiting in the queue when the thread dies are answered 503, not stranded."""
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()
    release = threading.Event()

    def block_then_die(conn: sqlite3.Connection, params: Any) -> bool:
        loop.call_soon_threadsafe(entered.set)
        release.wait(PROMPT_S)
        raise Fatal("dies while others queue")

    monkeypatch.setattr(runs, "insert_row", block_then_die)
    first = asyncio.create_task(api.post("/api/v1/runs", json=new_run()))
    await asyncio.wait_for(entered.wait(), PROMPT_S)
    queued = [asyncio.create_task(api.post("/api/v1/runs", json=new_run())) for _ in range(5)]
    await asyncio.sleep(0.2)  # let them reach the writer's queue
    release.set()
    replies = await asyncio.wait_for(asyncio.gather(first, *queued), PROMPT_S)
    assert [reply.status for reply in replies] == [503] * 6
