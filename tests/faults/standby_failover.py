"""One failover round on real processes: a primary and its standby (``pg_standby``),
the real ``telemetry-server`` on both through a multi-host URL, a spoold in front of it;
agents write runs, the primary is killed with ``kill -9`` mid-ingest, the standby is
promoted, and every acknowledged operation is looked for on the promoted standby.

Two kinds of writers, each with a ledger of what it was told (``procs.RunLedger``):

- *direct* writers talk to the server itself: a 2xx there means the database committed,
  so these ledgers are the ones replication can make a liar of. Every acknowledgement is
  timed: the first one after the promotion began is when ingest resumed.
- *spooled* agents talk to spoold, which answers from its durable spool: they must never
  notice the failover (every lifecycle acknowledged), and spoold must deliver it all.

``lagging=True`` freezes the standby's feed (SIGSTOP of the primary's WAL sender) for a
while before the kill: with asynchronous replication the primary keeps acknowledging
commits the standby will never see, so the check must report them lost; with
synchronous replication it acknowledges nothing it has not sent, so nothing is lost.
Used by ``test_pg_standby_promotion.py`` and ``bench/pg_failover_bench.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pg_standby
from daemons import free_port
from procs import (
    Reaper,
    RunLedger,
    Tally,
    agent,
    call,
    commit_hash_of,
    create_body,
    get_json,
    new_event_id,
    start_server,
    start_spoold,
    tally,
    wait_drained,
)

PATCHES = 3
DIRECT_WRITERS = 3
SPOOLED_AGENTS = 2
#: Every loop below is bounded by these as well as by time.
MAX_RUNS = 20_000
_BOUND_S = 60.0
_POLL_S = 0.02
_FAILED_PAUSE_S = 0.02


@dataclass
class Outcome:
    """What one round saw: the ledgers' check on the promoted standby, and times (s)."""

    direct: Tally
    spooled: Tally
    spooled_incomplete: int  # spooled lifecycles not acknowledged in full (must be 0)
    acked_before_kill: int
    #: direct acknowledgements from the standby's feed freezing to the promotion
    acked_while_lagging: int
    kill_to_promote_s: float
    promote_s: float  # pg_promote(wait) until the standby takes writes
    resume_s: float  # promotion begun -> first direct write acknowledged
    spoold_resume_s: float  # promotion begun -> spoold forwards again
    duplicate_rows: int
    #: statuses of the direct writes not acknowledged (503 while no primary; never 500)
    refusals: dict[int | None, int] = field(default_factory=dict)
    direct_runs: int = 0
    spooled_runs: int = 0

    @property
    def lost(self) -> int:
        return self.direct.lost + self.spooled.lost

    def summary(self) -> str:
        return (
            f"acked ops: direct {self.direct.acked} ({self.direct_runs} runs),"
            f" spooled {self.spooled.acked} ({self.spooled_runs} runs);"
            f" lost: direct {self.direct.lost}, spooled {self.spooled.lost};"
            f" acked before the kill: {self.acked_before_kill},"
            f" while the standby lagged: {self.acked_while_lagging};"
            f" kill -> promote {self.kill_to_promote_s:.3f} s;"
            f" promote {self.promote_s:.3f} s; promotion -> first write {self.resume_s:.3f} s"
            f" (spoold forwarding again after {self.spoold_resume_s:.3f} s);"
            f" direct writes refused: {self.refusals}"
        )


class Acks:
    """The monotonic times of every direct acknowledgement, and the statuses of the
    answers that were not (``None``: no answer)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.refusals: Counter[int | None] = Counter()

    def after(self, instant: float) -> list[float]:
        return [t for t in self.times if t >= instant]


async def _timed_lifecycle(
    http: aiohttp.ClientSession, base: str, run: RunLedger, acks: Acks
) -> bool:
    """``procs.lifecycle``'s steps, each acknowledgement timed."""

    async def step(method: str, url: str, body: dict[str, Any]) -> bool:
        answer = await call(http, method, url, body)
        if answer.ok:
            acks.times.append(time.monotonic())
            return True
        run.ambiguous += answer.status is None and answer.sent
        acks.refusals[answer.status] += 1
        return False

    if not await step("POST", f"{base}/api/v1/runs", create_body(run.event_id)):
        return False
    run.create_acked = True
    url = f"{base}/api/v1/runs/{run.event_id}"
    for k in range(1, PATCHES + 1):
        run.items_sent = k
        change: dict[str, Any] = {"items_succeeded": k, **({"status": "running"} if k == 1 else {})}
        if not await step("PATCH", url, change):
            return False
        run.items_acked = k
    final = {"status": run.final, "end_time": "2026-01-12T10:35:00Z", "duration_ms": 1000}
    if not await step("PATCH", url, final):
        return False
    run.status_acked = run.final
    commit = {"commit_hash": commit_hash_of(run.event_id), "commit_source": "ci"}
    if not await step("POST", f"{url}/associate-commit", commit):
        return False
    run.commit_acked = commit["commit_hash"]
    return True


async def _direct_writer(
    base: str, ledger: list[RunLedger], acks: Acks, stop: asyncio.Event
) -> None:
    """Lifecycles straight to the server until ``stop``; after a failure, a short pause
    and a new run (the failed run's later steps are never sent)."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for n in range(MAX_RUNS):
            if stop.is_set():
                return
            run = RunLedger(new_event_id(), final="success" if n % 3 else "failure")
            ledger.append(run)
            if not await _timed_lifecycle(http, base, run, acks):
                await asyncio.sleep(_FAILED_PAUSE_S)


async def _until(predicate: Any, what: str, bound_s: float = _BOUND_S) -> float:
    """Poll ``predicate`` (bounded in count and time); the monotonic time it held."""
    deadline = time.monotonic() + bound_s
    for _ in range(int(bound_s / _POLL_S) + 1):
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(_POLL_S)
    raise AssertionError(f"timed out after {bound_s} s waiting for {what}")


def _forwarded(spoold_url: str) -> int:
    status, body = get_json(spoold_url + "/health")
    if status is None or not isinstance(body, dict):
        return -1
    return int(body["counters"]["forwarded"])


async def _rows(url: str) -> tuple[dict[str, dict[str, Any]], int]:
    """Every run on the promoted standby by event_id, and how many rows repeat one."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT event_id, items_succeeded, status, git_commit_hash FROM agent_runs"
        )
    finally:
        await conn.close()
    by_id = {row["event_id"]: dict(row) for row in rows}
    return by_id, len(rows) - len(by_id)


def _complete(runs: Iterable[RunLedger]) -> int:
    return sum(run.commit_acked is None for run in runs)


async def failover_round(
    bin_path: Path,
    workdir: Path,
    reaper: Reaper,
    *,
    synchronous: bool,
    lagging: bool,
    seed: int = 0,
    ingest_s: float = 1.5,
    lag_s: float = 1.5,
    detect_s: float = 1.0,
) -> Outcome:
    """One round (see the module docstring). ``detect_s``: the time between the kill
    and the promotion, as a failover manager would take to decide."""
    rng = random.Random(seed)
    database = "failover"
    pair = await asyncio.to_thread(
        pg_standby.start_pair, bin_path, synchronous=synchronous, databases=(database,)
    )
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    walsender = 0
    try:
        server = await asyncio.to_thread(
            start_server,
            reaper,
            workdir,
            port=free_port(),
            db=workdir / "unused.sqlite",
            env={"TELEMETRY_DATABASE_URL": pair.url(database)},
        )
        spoold = await asyncio.to_thread(
            start_spoold,
            reaper,
            workdir,
            port=free_port(),
            upstream=server.url,
            spool_dir=workdir / "spool",
        )
        direct: list[RunLedger] = []
        spooled: list[RunLedger] = []
        acks = Acks()
        tasks = [
            asyncio.create_task(_direct_writer(server.url, direct, acks, stop))
            for _ in range(DIRECT_WRITERS)
        ] + [
            asyncio.create_task(
                agent(spoold.url, spooled, stop=stop, max_runs=MAX_RUNS, patches=PATCHES)
            )
            for _ in range(SPOOLED_AGENTS)
        ]
        await _until(lambda: len(acks.times) >= 50, "50 direct acknowledgements")
        await _until(lambda: _forwarded(spoold.url) > 0, "spoold to forward")
        await asyncio.sleep(rng.uniform(0.5, 1.0) * ingest_s)
        lag_started = time.monotonic()
        if lagging:
            walsender = await asyncio.to_thread(pair.walsender_pid)
            lag_started = time.monotonic()
            os.kill(walsender, signal.SIGSTOP)  # the standby receives nothing from here on
            await asyncio.sleep(lag_s)
        await asyncio.sleep(rng.uniform(0.0, 0.3))  # a random moment among writes in flight
        killed = time.monotonic()
        await asyncio.to_thread(pair.kill9_primary, *([walsender] if walsender else []))
        acked_before_kill = len(acks.times)
        await asyncio.sleep(detect_s)
        forwarded_before = _forwarded(spoold.url)
        promote_started = time.monotonic()
        # acknowledged after the standby's feed froze: what asynchronous replication loses
        acked_while_lagging = len(acks.after(lag_started)) if lagging else 0
        await asyncio.to_thread(pair.promote)
        promoted = time.monotonic()
        assert not await asyncio.to_thread(pair.in_recovery), "the standby is still a standby"
        await _until(lambda: bool(acks.after(promote_started)), "a write after promotion")
        resumed = min(acks.after(promote_started))
        spoold_resumed = await _until(
            lambda: _forwarded(spoold.url) > forwarded_before, "spoold to forward again"
        )
        await _until(lambda: len(acks.after(resumed)) >= 50, "50 writes on the new primary")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), _BOUND_S)
        await asyncio.to_thread(wait_drained, spoold, timeout_s=_BOUND_S)
        rows, duplicates = await _rows(pair.standby.url(database))
        return Outcome(
            direct=tally(direct, rows),
            spooled=tally(spooled, rows),
            spooled_incomplete=_complete(spooled),
            acked_before_kill=acked_before_kill,
            acked_while_lagging=acked_while_lagging,
            kill_to_promote_s=promote_started - killed,
            promote_s=promoted - promote_started,
            resume_s=resumed - promote_started,
            spoold_resume_s=spoold_resumed - promote_started,
            duplicate_rows=duplicates,
            refusals=dict(acks.refusals),
            direct_runs=len(direct),
            spooled_runs=len(spooled),
        )
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        reaper.stop_all()
        reaper.daemons.clear()
        if walsender:
            with contextlib.suppress(ProcessLookupError):
                os.kill(walsender, signal.SIGKILL)  # never left stopped
        await asyncio.to_thread(pair.destroy)
