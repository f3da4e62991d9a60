"""A flapping upstream between spoold and the real server: no loss, no duplicates,
terminal statuses intact."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from daemons import free_port
from procs import (
    FAULTS,
    FlakyProxy,
    Reaper,
    RunLedger,
    agent,
    create_body,
    post_json,
    server_rows,
    start_server,
    start_spoold,
    tally,
    wait_drained,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

WEIGHTS = {
    "ok": 0.35,
    "http_503": 0.10,
    "http_429": 0.05,
    "http_500": 0.10,
    "stall": 0.05,
    "reset": 0.15,
    "commit_drop": 0.20,
}
MIN_EACH_FAULT = 1
LOAD_BUDGET_S = 8.0


async def test_flapping_upstream_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, reaper: Reaper
) -> None:
    """503 / 429+Retry-After / 500 / stalls past the timeout / resets / commit-then-drop at
    random between spoold and the server: every acked op arrives, one row per create, and
    finished runs stay finished even when stale 'running' snapshots are replayed."""
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
    print(f"\n[flapping] seed={seed} (FAULT_SEED to replay)")
    db = tmp_path / "server.sqlite"
    server = start_server(reaper, tmp_path, port=free_port(), db=db)
    with FlakyProxy(server.port, seed=seed, weights=WEIGHTS, stall_s=1.5) as proxy:
        spoold = start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=proxy.url,
            spool_dir=tmp_path / "spool",
            env={
                "SPOOLD_BATCH_SIZE": "12",  # many small batches: runs span several of them
                "SPOOLD_UPSTREAM_TIMEOUT_S": "1",
                "SPOOLD_LOG_LEVEL": "WARNING",
            },
        )
        ledger: list[RunLedger] = []
        stop = asyncio.Event()
        started = time.monotonic()
        for wave in range(40):  # bounded: stops once every fault was seen often enough
            await asyncio.gather(
                *(
                    agent(spoold.url, ledger, stop=stop, max_runs=1, round_no=wave, patches=3)
                    for _ in range(6)
                )
            )
            await asyncio.sleep(0.3)  # let the drainer meet the faults between waves
            seen = min(proxy.counts[kind] for kind in FAULTS)
            if seen >= MIN_EACH_FAULT or time.monotonic() - started > LOAD_BUDGET_S:
                break
        assert all(run.acked_ops() == 6 for run in ledger), "spoold answers locally, always"
        await asyncio.to_thread(wait_drained, spoold, timeout_s=90)
        faults = dict(proxy.counts)
    print(f"[flapping] upstream requests by fault: {faults}")
    print(f"[flapping] batches applied by the server: {proxy.batches_forwarded}")
    assert all(faults.get(kind, 0) >= 1 for kind in FAULTS), faults

    rows = server_rows(db)
    result = tally(ledger, rows)
    assert result.problems == []
    assert result.lost == 0
    assert len(rows) == len(ledger)  # no duplicate rows, no phantom rows
    for run in ledger:
        row = rows[run.event_id]
        assert (row["status"], row["items_succeeded"]) == (run.final, 3)

    # Replaying stale "running" snapshots of finished runs never reopens them.
    stale = [
        {
            "event_id": run.event_id,
            "create": create_body(run.event_id),
            "update": {"status": "running"},
        }
        for run in ledger
    ]
    status, body = post_json(f"{server.url}/api/v1/runs/batch?mode=upsert", stale)
    assert status == 200, body
    assert body["errors"] == []
    assert body["inserted"] == 0
    after = server_rows(db)
    assert {run.event_id: after[run.event_id]["status"] for run in ledger} == {
        run.event_id: run.final for run in ledger
    }
    print(f"[flapping] runs={len(ledger)} acked={result.acked} delivered={result.delivered}")
