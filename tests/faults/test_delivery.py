"""Delivery through the real sidecar: exactly once in final state, and across outages and restarts."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemons import free_port
from procs import (
    Reaper,
    RunLedger,
    agent,
    call,
    commit_hash_of,
    create_body,
    health,
    new_event_id,
    server_rows,
    start_server,
    start_spoold,
    tally,
    wait_drained,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: Differ between the two copies of one run by construction (run_json renders them all).
#: Columns that say when or through which path a run was written, not what it holds.
STAMPS = (
    *("event_id", "id", "created_at", "updated_at", "run_json"),
    *("last_seen_at", "sidecar_id"),
    *("snapshot_source", "snapshot_seq"),
)


async def _lifecycle_answers(http: aiohttp.ClientSession, base: str, event_id: str) -> list[Any]:
    """The guide's lifecycle with fixed bodies; the (status, body) of every step."""
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/v1/runs", create_body(event_id, run_id="same-run", items_discovered=7)),
        ("POST", "/api/v1/runs", create_body(event_id, run_id="same-run")),
        ("PATCH", f"/api/v1/runs/{event_id}", {"items_succeeded": 3, "status": "running"}),
        (
            "PATCH",
            f"/api/v1/runs/{event_id}",
            {"status": "success", "end_time": "2026-01-12T10:35:00+05:30", "duration_ms": 9},
        ),
        (
            "POST",
            f"/api/v1/runs/{event_id}/associate-commit",
            {"commit_hash": "abc1234567890", "commit_source": "llm", "commit_author": "A <a@b>"},
        ),
    ]
    answers = []
    for method, path, body in steps:
        answer = await call(http, method, base + path, body)
        assert answer.ok, (method, path, answer)
        reply = dict(answer.body)
        if reply.get("event_id") == event_id:
            reply["event_id"] = "<id>"
        answers.append((answer.status, reply))
    return answers


async def test_acknowledged_operations_reach_the_server_exactly_once(
    tmp_path: Path, reaper: Reaper
) -> None:
    """16 concurrent agents' lifecycles through spoold: every acked op is on the server in its
    final state, one row per acked create, and a sidecar lifecycle equals a direct one."""
    db = tmp_path / "server.sqlite"
    server = start_server(reaper, tmp_path, port=free_port(), db=db)
    spoold = start_spoold(
        reaper, tmp_path, port=free_port(), upstream=server.url, spool_dir=tmp_path / "spool"
    )
    ledger: list[RunLedger] = []
    stop = asyncio.Event()
    await asyncio.gather(
        *(agent(spoold.url, ledger, stop=stop, max_runs=8, patches=3) for _ in range(16))
    )
    async with aiohttp.ClientSession() as http:
        # A repeated create is answered "duplicate" and never becomes a second row.
        repeats = [
            await call(http, "POST", f"{spoold.url}/api/v1/runs", create_body(run.event_id))
            for run in ledger[:20]
        ]
        assert {(a.status, a.body["status"]) for a in repeats} == {(201, "duplicate")}
        via_sidecar, direct = new_event_id(), new_event_id()
        sidecar_answers = await _lifecycle_answers(http, spoold.url, via_sidecar)
        direct_answers = await _lifecycle_answers(http, server.url, direct)
    drained = await asyncio.to_thread(wait_drained, spoold)

    rows = server_rows(db)
    assert all(run.acked_ops() == 6 for run in ledger), "every request had a 2xx"
    result = tally(ledger, rows)
    assert result.problems == []
    assert result.lost == 0
    assert len(rows) == len(ledger) + 2  # exactly one row per acknowledged create
    for run in ledger:
        row = rows[run.event_id]
        assert (row["items_succeeded"], row["status"], row["git_commit_hash"]) == (
            3,
            run.final,
            commit_hash_of(run.event_id),
        )
    assert sidecar_answers == direct_answers
    strip = {key: value for key, value in rows[via_sidecar].items() if key not in STAMPS}
    assert strip == {key: value for key, value in rows[direct].items() if key not in STAMPS}
    counters = drained["counters"]
    assert counters["dead_lettered"] == 0
    assert counters["accepted"] == counters["forwarded"] == 6 * len(ledger) + 4
    assert counters["duplicates_answered"] == 21
    print(f"\n[exactly-once] runs={len(ledger)} acked={result.acked} delivered={result.delivered}")


async def test_server_down_at_start_then_up_across_spoold_restarts(
    tmp_path: Path, reaper: Reaper
) -> None:
    """Server down from the start; spoold restarted by SIGTERM and by SIGKILL during the
    outage; once the server is up every acknowledged operation arrives, once."""
    server_port, spoold_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{server_port}"
    spool_dir = tmp_path / "spool"
    db = tmp_path / "server.sqlite"
    spoold = start_spoold(
        reaper, tmp_path, port=spoold_port, upstream=upstream, spool_dir=spool_dir
    )
    ledger: list[RunLedger] = []
    stop = asyncio.Event()

    async def phase(round_no: int) -> None:
        await asyncio.gather(
            *(
                agent(spoold.url, ledger, stop=stop, max_runs=4, round_no=round_no, patches=2)
                for _ in range(8)
            )
        )

    await phase(1)
    before = health(spoold)
    assert before["upstream"]["reachable"] is False
    assert before["spool"]["depth"] == sum(run.acked_ops() for run in ledger)

    assert spoold.stop(signal.SIGTERM, timeout_s=10) == 0  # outage: drains until the deadline
    spoold = start_spoold(
        reaper, tmp_path, port=spoold_port, upstream=upstream, spool_dir=spool_dir
    )
    assert health(spoold)["spool"]["depth"] == before["spool"]["depth"]
    await phase(2)
    # A run accepted before the restart is still known: its update is accepted, not queued blind.
    async with aiohttp.ClientSession() as http:
        first = ledger[0]
        answer = await call(
            http, "PATCH", f"{spoold.url}/api/v1/runs/{first.event_id}", {"items_failed": 1}
        )
        assert answer.status == 200, answer

    assert spoold.stop(signal.SIGKILL) == -signal.SIGKILL
    spoold = start_spoold(
        reaper, tmp_path, port=spoold_port, upstream=upstream, spool_dir=spool_dir
    )
    await phase(3)
    queued = health(spoold)["spool"]["depth"]
    assert queued == sum(run.acked_ops() for run in ledger) + 1

    start_server(reaper, tmp_path, port=server_port, db=db)
    await asyncio.to_thread(wait_drained, spoold, timeout_s=60)
    rows = server_rows(db)
    result = tally(ledger, rows)
    assert all(run.acked_ops() == 5 for run in ledger)
    assert result.problems == []
    assert result.lost == 0
    assert len(rows) == len(ledger)
    assert rows[ledger[0].event_id]["items_failed"] == 1
    print(f"\n[outage+restarts] queued={queued} acked={result.acked} delivered={result.delivered}")
