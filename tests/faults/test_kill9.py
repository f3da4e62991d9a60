"""kill -9 of spoold under concurrent load, at random moments, many times."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path
from random import Random

import aiohttp
import pytest
from daemons import Daemon, free_port
from procs import (
    Reaper,
    RunLedger,
    agent,
    call,
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

ROUNDS = 12
AGENTS = 8
#: A restarted sidecar must accept again soon: a bound on a hang (e.g. a recovery that walks
#: the whole spool), not a speed target; start-up speed is measured in bench/spoold_bench.py.
#: Typically 0.2-0.5 s here; 1.7-2.2 s was seen on a 2-core machine at load average 14.
ACCEPTING_WITHIN_S = 6.0


async def _start_and_prove_accepting(
    reaper: Reaper, workdir: Path, ledger: list[RunLedger], round_no: int, **kwargs: object
) -> tuple[Daemon, float]:
    """Start spoold; the seconds from spawn to its first acknowledged create."""
    started = time.monotonic()
    spoold = await asyncio.to_thread(start_spoold, reaper, workdir, **kwargs)  # type: ignore[arg-type]
    run = RunLedger(new_event_id(), round=round_no)
    ledger.append(run)
    async with aiohttp.ClientSession() as http:
        answer = await call(http, "POST", f"{spoold.url}/api/v1/runs", create_body(run.event_id))
    assert answer.status == 201, answer
    run.create_acked = True
    return spoold, time.monotonic() - started


@pytest.mark.timeout(240)
async def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path, reaper: Reaper) -> None:
    """>= 10 rounds of concurrent lifecycles with spoold SIGKILLed at a random moment (the
    server up for half the rounds, down for the rest): after a last restart and drain, every
    operation that got a 2xx is on the server; spoold accepts within 2 s of each restart."""
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
    rng = Random(seed)
    print(f"\n[kill-9] seed={seed} (FAULT_SEED to replay)")
    db = tmp_path / "server.sqlite"
    server_port, spoold_port = free_port(), free_port()
    spool_dir = tmp_path / "spool"
    daemon_args = {
        "port": spoold_port,
        "upstream": f"http://127.0.0.1:{server_port}",
        "spool_dir": spool_dir,
        "env": {"SPOOLD_LOG_LEVEL": "WARNING"},
    }
    server: Daemon | None = start_server(reaper, tmp_path, port=server_port, db=db)
    ledger: list[RunLedger] = []
    startup_s: list[float] = []
    kills: list[str] = []
    for round_no in range(ROUNDS):
        if round_no == ROUNDS // 2 and server is not None:
            server.stop()  # the second half runs during an outage: the backlog grows
            server = None
        spoold, took = await _start_and_prove_accepting(
            reaper, tmp_path, ledger, round_no, **daemon_args
        )
        startup_s.append(took)
        stop = asyncio.Event()
        agents = [
            asyncio.create_task(
                agent(spoold.url, ledger, stop=stop, max_runs=10_000, round_no=round_no, patches=4)
            )
            for _ in range(AGENTS)
        ]
        kill_after = rng.uniform(0.4, 1.6)
        await asyncio.sleep(kill_after)
        returncode = spoold.stop(signal.SIGKILL)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*agents), 30)
        assert returncode == -signal.SIGKILL
        kills.append(f"{kill_after:.2f}s")

    if server is None:
        server = start_server(reaper, tmp_path, port=server_port, db=db)
    spoold, took = await _start_and_prove_accepting(reaper, tmp_path, ledger, ROUNDS, **daemon_args)
    startup_s.append(took)
    # kill -9 between the spool's ack and the index's settle skews the counters (a known
    # bug, pinned below): wait for an empty queue only.
    backlog = (await asyncio.to_thread(wait_drained, spoold, timeout_s=90, counters_add_up=False))[
        "counters"
    ]
    rows = server_rows(db)

    total = tally(ledger, rows)
    for round_no in range(ROUNDS + 1):
        runs = [run for run in ledger if run.round == round_no]
        part = tally(runs, rows)
        ambiguous = sum(run.ambiguous for run in runs)
        when = kills[round_no] if round_no < ROUNDS else "final"
        print(
            f"[kill-9] round {round_no:2d} (kill at {when}): acked={part.acked} "
            f"delivered={part.delivered} lost={part.lost} unanswered={ambiguous} "
            f"startup={startup_s[round_no]:.2f}s"
        )
    print(
        f"[kill-9] total: acked={total.acked} delivered={total.delivered} lost={total.lost}; "
        f"rows={len(rows)} acked creates={sum(r.create_acked for r in ledger)}; "
        f"spoold counters {backlog}"
    )
    assert total.problems == []
    assert total.lost == 0
    attempted = {run.event_id for run in ledger}
    assert set(rows) <= attempted, "the server holds runs nobody sent"
    assert sum(run.create_acked for run in ledger) <= len(rows)
    assert max(startup_s) <= ACCEPTING_WITHIN_S, startup_s


async def test_counters_add_up_after_kill_9_during_the_drain(
    tmp_path: Path, reaper: Reaper
) -> None:
    """kill -9 while the drainer acks a backlog of one-operation groups: after the last
    restart has drained, accepted = forwarded + queued + dead_lettered still holds."""
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
    rng = Random(seed)
    db = tmp_path / "server.sqlite"
    server_port = free_port()
    daemon_args = {
        "port": free_port(),
        "upstream": f"http://127.0.0.1:{server_port}",
        "spool_dir": tmp_path / "spool",
        # One fsync'd group per request, hence one ack per operation: the drain is mostly acks.
        "env": {"SPOOLD_LOG_LEVEL": "WARNING", "SPOOLD_MAX_GROUP": "1"},
    }
    ledger: list[RunLedger] = []
    spoold = start_spoold(reaper, tmp_path, **daemon_args)  # type: ignore[arg-type]
    stop = asyncio.Event()
    await asyncio.gather(
        *(agent(spoold.url, ledger, stop=stop, max_runs=100, patches=2) for _ in range(8))
    )
    start_server(reaper, tmp_path, port=server_port, db=db)
    depths = []
    for _ in range(12):  # bounded; stops once a restart shows the counters skewed
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        depths.append(health(spoold)["spool"]["depth"])
        assert spoold.stop(signal.SIGKILL) == -signal.SIGKILL
        spoold = start_spoold(reaper, tmp_path, **daemon_args)  # type: ignore[arg-type]
        now = health(spoold)["counters"]
        skewed = now["accepted"] != now["forwarded"] + now["queued"] + now["dead_lettered"]
        if skewed or now["queued"] == 0:
            break
    counters = (await asyncio.to_thread(wait_drained, spoold, timeout_s=60, counters_add_up=False))[
        "counters"
    ]
    print(
        f"\n[kill-9 accounting] seed={seed} depth at each kill {depths}; "
        f"acked={sum(r.acked_ops() for r in ledger)} {counters}"
    )
    index = sqlite3.connect(tmp_path / "spool" / "runs-index.sqlite")
    try:
        (stuck,) = index.execute("SELECT COUNT(*) FROM runs WHERE pending > 0").fetchone()
    finally:
        index.close()
    print(f"[kill-9 accounting] runs still 'pending' in the index after the drain: {stuck}")
    assert tally(ledger, server_rows(db)).lost == 0
    assert counters["accepted"] == (
        counters["forwarded"] + counters["queued"] + counters["dead_lettered"]
    )
