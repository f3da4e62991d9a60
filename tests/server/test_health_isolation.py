"""/health has its own connection: readers saturated by slow queries do not make it sick."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

from server.http.runs import DATABASE
from server.storage import runs

PROMPT_S = 1.5  # below the probe's own 2 s timeout: a queued probe would miss it
#: A read slower than the inline budget: tried on the event loop, it moves to the readers.
SLOW_SQL = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000000)"
    " SELECT count(*) FROM n"
)


async def test_health_answers_while_every_reader_is_busy(make_api, new_run, monkeypatch):
    """Many concurrent list queries hold every reader thread; /health still answers ok,
    promptly, and really reads the database on its own connection."""
    api = await make_api(reader_threads=2)
    await api.create(new_run())
    loop = asyncio.get_running_loop()
    release = threading.Event()
    busy = 0
    all_busy = asyncio.Event()
    slow_query = runs.query_page_json

    def slow(conn: sqlite3.Connection, query: Any, after: Any = None) -> Any:
        nonlocal busy
        if threading.current_thread() is threading.main_thread():
            conn.execute(SLOW_SQL).fetchall()  # on the loop: interrupted at its budget
        busy += 1
        if busy >= 2:
            loop.call_soon_threadsafe(all_busy.set)
        release.wait(30)  # a slow query, held until the test has looked
        return slow_query(conn, query, after)

    monkeypatch.setattr(runs, "query_page_json", slow)
    queries = [asyncio.create_task(api.get("/api/v1/runs")) for _ in range(20)]
    try:
        await asyncio.wait_for(all_busy.wait(), 10)
        for _ in range(5):
            started = time.monotonic()
            reply = await asyncio.wait_for(api.get("/health"), PROMPT_S)
            assert reply.status == 200, reply.body
            assert reply.body["status"] == "ok"
            assert time.monotonic() - started < PROMPT_S
        assert not any(query.done() for query in queries)  # the readers really were busy
    finally:
        release.set()
        replies = await asyncio.wait_for(asyncio.gather(*queries), 30)
    assert all(reply.status == 200 for reply in replies)


async def test_health_really_reads_the_database(api):
    """The probe really reads through its connection: with that connection unusable,
    /health turns unhealthy (503 with a reason), not a 500."""
    database = api.client.server.app[DATABASE]
    assert (await api.get("/health")).body["status"] == "ok"
    assert database.probe._conn is not None
    database.probe._conn.close()
    reply = await api.get("/health")
    assert reply.status == 503
    assert reply.body["status"] == "unhealthy"
    assert "not answering" in reply.body["reason"]
    assert (await api.get("/health")).body["status"] == "ok"  # a fresh connection next time


async def test_concurrent_health_checks_share_one_read(api, monkeypatch):
    """A burst of /health calls costs one read in flight at a time (single flight)."""
    database = api.client.server.app[DATABASE]
    reads = 0
    original = database.probe._read
    gate = threading.Event()

    def counted() -> None:
        nonlocal reads
        reads += 1
        gate.wait(5)
        original()

    monkeypatch.setattr(database.probe, "_read", counted)
    burst = [asyncio.create_task(api.get("/health")) for _ in range(30)]
    await asyncio.sleep(0.3)
    gate.set()
    replies = await asyncio.wait_for(asyncio.gather(*burst), 10)
    assert all(reply.status == 200 for reply in replies)
    assert reads <= 3, reads
