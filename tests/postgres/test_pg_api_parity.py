"""Hostile requests to the run endpoints answer the same, byte for byte, whether the
endpoints run on SQLite or on PostgreSQL: NUL characters (which PostgreSQL's text
cannot hold), quotes, ``?``, ``%``, emoji, the marker of the NUL encoding, 10k-char
values, in creates, PATCHes, batches, upserts, lookups, filters and cursor walks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from test_pg_parity import Clock

from server.postgres import database as pg_database
from server.storage import database as sqlite_database

TEXT = (
    "nul\x00inside",
    "\x00",
    "\uffff marker first",
    "quote ' double \" back \\",
    "? %s %% $1 :x",
    "emoji 🚀👩‍💻 中文",
    "y" * 10_000,
)
EVENT_IDS = ("plain", "ev 🚀", "ev'\"?%&=#", "\uffffmarked", "ü" * 255)


def _run(event_id: str, n: int) -> dict[str, Any]:
    value = TEXT[n % len(TEXT)]
    return {
        "event_id": event_id,
        "run_id": f"run {n} {event_id}"[:255],
        "agent_name": ("agent ✓", "agent'?%")[n % 2],
        "job_type": "job",
        "start_time": "2026-03-01T11:00:00+05:30",
        "error_details": value,
        "git_branch": value,
        "git_repo": "https://github.com/o/r.git",
        "git_commit_hash": "ABCDEF1",
        "metrics_json": {value: [value, {"k": value}], "n": 2**63 - 1},
        "context_json": "{}",
    }


async def test_hostile_requests_answer_alike(
    make_api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_database, "utc_now", Clock())
    monkeypatch.setattr(pg_database, "utc_now", Clock())
    # The clock is frozen in the past: with the reaper on, whichever backend's first
    # pass came after the creates would reap them (a race, not a difference).
    reference = await make_api.sqlite(db_path=tmp_path / "reference.sqlite", stale_after_s=0)
    postgres = await make_api(stale_after_s=0)

    async def both(method: str, path: str, **kwargs: Any) -> Any:
        expected = await reference.request(method, path, **kwargs)
        found = await postgres.request(method, path, **kwargs)
        assert (found.status, found.text) == (expected.status, expected.text), (method, path)
        return expected

    for n, event_id in enumerate(EVENT_IDS):
        assert (await both("POST", "/api/v1/runs", json=_run(event_id, n))).status == 201
        await both("POST", "/api/v1/runs", json=_run(event_id, n + 1))  # duplicate
    batch = [_run(f"batch {n}", n) for n in range(len(TEXT))] + [{"event_id": "bad\x00"}]
    await both("POST", "/api/v1/runs/batch", json=batch)
    upserts = [
        {"event_id": "plain", "update": {"status": "success", "output_summary": TEXT[0]}},
        {"event_id": "plain", "update": {"status": "running"}},  # never regresses
        {
            "event_id": "new\u00a0one",
            "create": _run("new\u00a0one", 3),
            "metrics_patch": {"\x00": 1},
        },
        {"event_id": "ghost", "update": {"status": "failure"}},
    ]
    await both("POST", "/api/v1/runs/batch?mode=upsert", json=upserts)
    await both("POST", "/api/v1/runs/batch?mode=upsert", json=upserts)  # replayed
    for n, event_id in enumerate(EVENT_IDS):
        path = f"/api/v1/runs/{quote(event_id, safe='')}"
        await both("PATCH", path, json={"error_summary": TEXT[-n], "items_failed": n})
        await both("PATCH", path, json={"metrics_json": {"x": TEXT[n]}, "end_time": None})
        for suffix in ("", "/commit-url", "/repo-url"):
            await both("GET", path + suffix)
    for absent in ("nul\x00", "\x00", "\uffff", "missing"):
        await both("GET", f"/api/v1/runs/{quote(absent, safe='')}")
    for params in (
        {},
        {"agent_name": "agent ✓"},
        {"agent_name": "agent'?%", "status": "running"},
        {"agent_name": "a\x00b"},
        {"job_type": "\uffffjob"},
        {"status": "success"},
    ):
        await _walk(both, reference, postgres, params)


async def _walk(
    both: Callable[..., Awaitable[Any]], reference: Any, postgres: Any, params: dict[str, str]
) -> None:
    """Every page of a list, following each server's own X-Next-Cursor (cursors are
    signed by each database's own key, so they differ; the pages must not)."""
    ours = theirs = None
    for _ in range(100):
        page = {**params, "limit": "2"}
        expected = await reference.get(
            "/api/v1/runs", params={**page, **({"cursor": theirs} if theirs else {})}
        )
        found = await postgres.get(
            "/api/v1/runs", params={**page, **({"cursor": ours} if ours else {})}
        )
        assert (found.status, found.text) == (expected.status, expected.text), params
        theirs = expected.headers.get("X-Next-Cursor")
        ours = found.headers.get("X-Next-Cursor")
        assert (ours is None) == (theirs is None)
        if theirs is None:
            return
    raise AssertionError("walk did not end")
