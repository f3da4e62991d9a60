"""A SQLite server's runs, written through its API with hostile values and copied by
``migrate`` while that server still runs, answer the same on PostgreSQL, byte for
byte: every page of ``GET /api/v1/runs`` (the cursors too: the key is copied), every
run, the metadata, the stats; the bookkeeping columns (snapshot source and sequence,
the sidecar, reaped_at) arrive as they were."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from server.postgres import import_sqlite
from server.postgres.text import decode
from server.postgres.url import parse_url
from server.storage.dump import ROW_COLUMNS, Dump

TEXT = (
    "nul\x00inside",
    "\x00",
    "\uffff marker first",
    "\uffff",
    "quote ' double \" back \\ tab\t nl\n",
    "? %s %% $1 :x",
    "emoji 🚀👩‍💻 中文 \u202e rtl",
    "y" * 10_000,
)
EVENT_IDS = ("plain", "ev 🚀", "ev'\"?%&=#", "\uffffmarked", "ü" * 255, "x" * 255)
AGENTS = ("agent ✓", "agent'?%", "\uffffagent", "a")
HUGE = {"blob": "z" * 1_500_000, "nested": [[[[{"k": "\x00"}]]]], "n": 2**63 - 1}


def _run(event_id: str, n: int) -> dict[str, Any]:
    value = TEXT[n % len(TEXT)]
    return {
        "event_id": event_id,
        "run_id": f"run {n} {event_id}"[:255],
        "agent_name": AGENTS[n % len(AGENTS)],
        "job_type": ("job", "\uffffjob")[n % 2],
        "start_time": "2026-03-01T11:00:00+05:30",
        "error_details": value,
        "git_branch": value,
        "input_summary": value,
        "git_repo": "https://github.com/o/r.git",
        "git_commit_hash": "ABCDEF1",
        "metrics_json": {value: [value, {"k": value}], "n": 2**63 - 1},
        "context_json": "{}",
        "heartbeat_timeout_s": 30 + n,
    }


async def _fill(api: Any) -> None:
    """Creates, a sidecar's batch and upserts (snapshot source and sequence kept),
    PATCHes, heartbeats, a huge metrics_json, runs that finish."""
    for n, event_id in enumerate(EVENT_IDS):
        assert (await api.request("POST", "/api/v1/runs", json=_run(event_id, n))).status == 201
    sidecar = {"X-Spoold-Id": "sidecar-1", "X-Spoold-Queued-Since": "2026-03-01T10:00:00Z"}
    batch = [_run(f"batch {n}", n) for n in range(len(TEXT) * 3)]
    reply = await api.request("POST", "/api/v1/runs/batch", json=batch, headers=sidecar)
    assert reply.status == 200, reply.text
    assert reply.body["inserted"] == len(batch), reply.text
    upserts = [
        {
            "event_id": "plain",
            "update": {"status": "success", "output_summary": TEXT[0]},
            "source": "spool:a",
            "sequence": 7,
        },
        {
            "event_id": "up new",
            "create": _run("up new", 3),
            "metrics_patch": {"\x00": 1},
            "source": "spool:b",
            "sequence": 2**63 - 1,
        },
    ]
    reply = await api.request(
        "POST", "/api/v1/runs/batch?mode=upsert", json=upserts, headers=sidecar
    )
    assert reply.status == 200, reply.text
    for n, event_id in enumerate(EVENT_IDS):
        path = f"/api/v1/runs/{quote(event_id, safe='')}"
        await api.request("PATCH", path, json={"error_summary": TEXT[-n], "items_failed": n})
        await api.request("POST", path + "/heartbeat", json={"step": TEXT[n]})
    huge = {**_run("huge", 1), "metrics_json": HUGE}
    assert (await api.request("POST", "/api/v1/runs", json=huge)).status == 201
    for event_id in ("ev 🚀", "x" * 255):
        path = f"/api/v1/runs/{quote(event_id, safe='')}"
        await api.request("PATCH", path, json={"status": "failure", "end_time": None})


async def _same(reference: Any, postgres: Any, path: str, **kwargs: Any) -> Any:
    expected = await reference.request("GET", path, **kwargs)
    found = await postgres.request("GET", path, **kwargs)
    assert (found.status, found.text) == (expected.status, expected.text), path
    assert found.headers.get("X-Next-Cursor") == expected.headers.get("X-Next-Cursor"), path
    return expected


@pytest.mark.parametrize("batch_rows", [1, 5000])
async def test_copied_runs_answer_alike(
    pg_url: str, make_api: Any, tmp_path: Path, batch_rows: int
) -> None:
    """(``pg_url`` first: its schema is dropped after the apps stop.) Copied while the
    SQLite server runs and takes new runs (the copy holds its
    snapshot, and verifies against it); a second pass copies the runs written since;
    then both servers answer the same."""
    db_path = tmp_path / "reference.sqlite"
    reference = await make_api.sqlite(db_path=db_path, stale_after_s=0)
    await _fill(reference)
    stop = asyncio.Event()

    async def write_meanwhile() -> int:
        for n in range(500):
            if stop.is_set():
                return n
            created = await reference.request("POST", "/api/v1/runs", json=_run(f"late {n}", n))
            assert created.status == 201
            await asyncio.sleep(0.002)
        return 500

    writer = asyncio.ensure_future(write_meanwhile())
    await asyncio.sleep(0.02)
    dump = Dump.open(db_path)
    try:
        outcome = await import_sqlite.run(dump, parse_url(pg_url), batch_rows=batch_rows)
        snapshot = dump.runs
    finally:
        dump.close()
    stop.set()
    late = await writer
    assert outcome.verified, outcome
    assert outcome.copied == outcome.source_runs == outcome.target_runs == snapshot
    dump = Dump.open(db_path)
    try:
        second = await import_sqlite.run(dump, parse_url(pg_url), batch_rows=batch_rows)
    finally:
        dump.close()
    assert second.verified, second
    assert second.target_runs == dump.runs == snapshot + second.copied
    assert late > 0
    postgres = await make_api(database_url=pg_url, stale_after_s=0)
    runs = (await _same(reference, postgres, "/api/v1/runs", params={"limit": "1000"})).body
    assert len(runs) == second.source_runs
    for run in runs:
        path = f"/api/v1/runs/{quote(run['event_id'], safe='')}"
        for suffix in ("", "/commit-url", "/repo-url"):
            await _same(reference, postgres, path + suffix)
    for params in (
        {},
        {"agent_name": AGENTS[0]},
        {"agent_name": AGENTS[2], "status": "running"},
        {"job_type": "\uffffjob"},
        {"status": "success"},
        {"status": "failure"},
    ):
        cursor = None
        for _ in range(100):
            page = {**params, "limit": "3", **({"cursor": cursor} if cursor else {})}
            cursor = (await _same(reference, postgres, "/api/v1/runs", params=page)).headers.get(
                "X-Next-Cursor"
            )
            if cursor is None:
                break
        assert cursor is None
    await _same(reference, postgres, "/api/v1/metadata")
    await _same(reference, postgres, "/api/v1/stats", params={"group_by": "agent_name,status"})
    await _same_stored_rows(db_path, pg_url)


async def _same_stored_rows(db_path: Path, pg_url: str) -> None:
    """Every column, the bookkeeping ones too, decoded as the PostgreSQL backend reads
    them, equals the SQLite row (not only what the API shows)."""
    lite = sqlite3.connect(db_path)
    try:
        expected = lite.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM agent_runs ORDER BY id")
        expected_rows = [tuple(row) for row in expected]
    finally:
        lite.close()
    conn = await asyncpg.connect(pg_url)
    try:
        found = await conn.fetch(f"SELECT {', '.join(ROW_COLUMNS)} FROM agent_runs ORDER BY id")
    finally:
        await conn.close()
    assert [tuple(decode(value) for value in row) for row in found] == expected_rows
    kept = {row[ROW_COLUMNS.index("snapshot_source")] for row in expected_rows}
    assert {"spool:a", "spool:b"} <= kept
    assert any(row[ROW_COLUMNS.index("sidecar_id")] == "sidecar-1" for row in expected_rows)
