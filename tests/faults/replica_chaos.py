"""Replica chaos: agents write run lifecycles (create, progress, finish) through the sidecars
while replicas of the central server on one PostgreSQL database are ``kill -9``-ed at random
moments and restarted; then the sidecars drain and the database is checked against what
the agents were told (the ledger of ``procs``).

One round = a workload of ``runs`` lifecycles with its own kill schedule (drawn from the
round's seed), kills going on while the agents write and for a random tail into the drain;
then every replica back, a bounded wait for every sidecar to drain, and the check:

* every acknowledged operation is in the database (``procs.tally``), each run in its final
  state (terminal status, counters, end fields), with nothing never sent;
* exactly one row per event_id (counted in SQL, not assumed from the UNIQUE constraint);
* no regression seen while it ran: a sample of rows is read all along, and a run once read
  finished is never read running again, its counters never lower.

Every loop is bounded in count and in time; the chaos thread stops on an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from random import Random
from typing import Any

import asyncpg
from daemons import Daemon
from pg_fleet import REPLICA_STARTUP_TIMEOUT_S, Fleet, group_cpu_s
from procs import RunLedger, agent, get_json, tally, wait_drained

#: Lifecycles are create -> PATCH progress (items_succeeded=1, running) -> PATCH finish.
PATCHES = 1
OPS_PER_RUN = 3
#: What the finish PATCH of ``procs.lifecycle`` sets besides the status.
FINAL_DURATION_MS = 300_000
TERMINAL = frozenset({"success", "failure", "partial", "timeout", "cancelled"})
_COLUMNS = (
    "event_id, status, items_succeeded, git_commit_hash, end_time, duration_ms, output_summary"
)


# ---- the chaos loop ------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    replica: int
    at_s: float  # since the chaos started
    down_s: float  # planned time down before the restart
    #: A sidecar had a batch in flight to this replica just before the kill (its /health,
    #: read a few milliseconds earlier): that batch's answer is lost, its fate in doubt.
    mid_batch: bool


def batch_in_flight_to(sidecars: list[Daemon], url: str) -> bool:
    """Whether any sidecar reports a batch in flight to ``url``, its current upstream."""
    for sidecar in sidecars:
        status, body = get_json(sidecar.url + "/health", timeout_s=2)
        if status is None or not isinstance(body, dict):
            continue
        upstream = body["upstream"]
        if upstream["url"] == url and upstream["in_flight_batches"] > 0:
            return True
    return False


class Chaos:
    """A thread that kills a random live replica (``kill -9``) after a random gap, and
    restarts each one after a random time down; several may be down at once, all of them
    at times. Bounded: at most ``max_kills`` kills, at most ``max_s`` seconds."""

    def __init__(
        self,
        fleet: Fleet,
        rng: Random,
        *,
        gap_s: tuple[float, float] = (0.5, 4.0),
        down_s: tuple[float, float] = (0.1, 2.5),
        max_kills: int = 200,
        max_s: float = 600.0,
    ) -> None:
        self.fleet = fleet
        self.rng = rng
        self.gap_s = gap_s
        self.down_s = down_s
        self.max_kills = max_kills
        self.max_s = max_s
        self.kills: list[Kill] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name="replica-chaos", daemon=True)

    def __enter__(self) -> Chaos:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End the loop, then restart every replica still down; re-raise a loop error."""
        self._stop.set()
        bound_s = 30 + len(self.fleet.ports) * REPLICA_STARTUP_TIMEOUT_S  # restarts under way
        self._thread.join(bound_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the chaos thread did not stop within {bound_s} s")
        self.fleet.restart_all_down()
        if self.error is not None:
            raise RuntimeError(f"the chaos loop failed: {self.error!r}") from self.error

    def _guarded(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by stop(): a replica that did not restart
            self.error = exc

    def _loop(self) -> None:
        started = time.monotonic()
        deadline = started + self.max_s
        restart_at: dict[int, float] = {}
        next_kill = started + self.rng.uniform(*self.gap_s)
        # A pass kills, or restarts, or finds every replica down (after a kill): bounded.
        for _ in range(3 * self.max_kills + 3):
            wake = min([next_kill, *restart_at.values()])
            if self._stop.wait(max(0.0, wake - time.monotonic())):
                return
            now = time.monotonic()
            if now >= deadline:
                return
            for n in sorted(n for n, at in restart_at.items() if at <= now):
                del restart_at[n]
                self.fleet.restart_replica(n)
            if time.monotonic() >= next_kill:
                if len(self.kills) >= self.max_kills:
                    next_kill = deadline
                    continue
                up = self.fleet.up()
                if up:
                    n = self.rng.choice(up)
                    down = self.rng.uniform(*self.down_s)
                    url = self.fleet.replica_urls[n]
                    mid_batch = batch_in_flight_to(self.fleet.sidecars, url)
                    self.fleet.kill_replica(n)
                    self.kills.append(Kill(n, time.monotonic() - started, down, mid_batch))
                    restart_at[n] = time.monotonic() + down
                next_kill = time.monotonic() + self.rng.uniform(*self.gap_s)


# ---- watching for regressions while it runs ------------------------------------------------


@dataclass
class Watch:
    """What the sampling reader saw: polls, rows read, and any regression."""

    polls: int = 0
    reads: int = 0
    seen: dict[str, tuple[str, int]] = field(default_factory=dict)
    regressions: list[str] = field(default_factory=list)

    def observe(self, event_id: str, status: str, items: int) -> None:
        before = self.seen.get(event_id)
        if before is not None:
            old_status, old_items = before
            if old_status in TERMINAL and status != old_status:
                self.regressions.append(f"{event_id}: read {old_status}, then {status}")
            if items < old_items:
                self.regressions.append(f"{event_id}: items_succeeded {old_items} -> {items}")
        self.seen[event_id] = (status, items)


async def poll(conn: Any, event_ids: list[str], watch: Watch) -> None:
    """Read these runs' status and counter once, as any reader of the database would."""
    rows = await conn.fetch(
        "SELECT event_id, status, items_succeeded FROM agent_runs WHERE event_id = ANY($1::text[])",
        event_ids,
    )
    watch.polls += 1
    watch.reads += len(rows)
    for row in rows:
        watch.observe(row["event_id"], row["status"], int(row["items_succeeded"]))


async def watch_regressions(
    database_url: str,
    ledger: list[RunLedger],
    stop: asyncio.Event,
    watch: Watch,
    rng: Random,
    *,
    sample: int = 500,
    interval_s: float = 0.25,
    max_polls: int = 20_000,
) -> None:
    """Read a random sample of the ledger's runs from the database every ``interval_s``
    until ``stop``."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        for _ in range(max_polls):
            if stop.is_set():
                return
            size = len(ledger)
            picks = [ledger[i].event_id for i in rng.sample(range(size), min(sample, size))]
            if picks:
                await poll(conn, picks, watch)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        await conn.close()


# ---- the check -----------------------------------------------------------------------------


async def read_rows(database_url: str) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Every stored run by event_id, and every event_id stored more than once (its count)."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM agent_runs")
        twice = await conn.fetch(
            "SELECT event_id, count(*) AS n FROM agent_runs GROUP BY event_id HAVING count(*) > 1"
        )
    finally:
        await conn.close()
    return {row["event_id"]: dict(row) for row in rows}, {r["event_id"]: r["n"] for r in twice}


@dataclass
class Verdict:
    acked: int
    delivered: int
    problems: list[str]

    @property
    def lost(self) -> int:
        return self.acked - self.delivered


def check(
    ledger: list[RunLedger], rows: dict[str, dict[str, Any]], duplicated: dict[str, int]
) -> Verdict:
    """The database against the ledger: every problem, named by event_id."""
    result = tally(ledger, rows)
    problems = list(result.problems)
    problems += [f"{event_id}: {n} rows" for event_id, n in sorted(duplicated.items())]
    sent = {run.event_id for run in ledger}
    problems += [f"{event_id}: a row no agent sent" for event_id in sorted(rows.keys() - sent)]
    for run in ledger:
        row = rows.get(run.event_id)
        if row is None or run.status_acked is None:
            continue
        final = (row["end_time"] is not None, row["duration_ms"], row["output_summary"])
        if final != (True, FINAL_DURATION_MS, f"{run.final} after {PATCHES} steps"):
            problems.append(f"{run.event_id}: finish fields {final}")
    return Verdict(result.acked, result.delivered, problems)


# ---- one round -----------------------------------------------------------------------------


@dataclass
class RoundReport:
    round: int
    runs: int
    ops_acked: int
    kills: int
    kills_mid_batch: int
    write_s: float
    drain_s: float
    failovers: int  # batches a sidecar moved to another replica after a failed attempt
    all_down_retries: int  # batches no replica took (retried after the drainer's back-off)
    regressions: list[str]
    verdict: Verdict
    #: CPU seconds used in the round: this process (agents, watcher, check), the sidecars,
    #: the replicas, and the replicas' start-ups (from exec to ready) among them.
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.verdict.problems and not self.regressions and self.verdict.lost == 0

    def line(self) -> str:
        checks = "passed" if self.passed else f"FAILED ({len(self.verdict.problems)} problems)"
        return (
            f"round {self.round}: runs={self.runs} ops_acked={self.ops_acked}"
            f" kills={self.kills} mid_batch={self.kills_mid_batch} write_s={self.write_s:.1f} drain_s={self.drain_s:.1f}"
            f" failovers={self.failovers} all_down_retries={self.all_down_retries} lost={self.verdict.lost}"
            f" regressions={len(self.regressions)} checks {checks}"
            + "".join(f" cpu_{name}_s={value:.1f}" for name, value in self.cpu_s.items())
        )


def all_down_retries(sidecars: list[Daemon]) -> int:
    """The sidecars' batch sends that no upstream took so far (their /health ``retries``)."""
    total = 0
    for sidecar in sidecars:
        status, body = get_json(sidecar.url + "/health", timeout_s=5)
        if status is not None and isinstance(body, dict):
            total += sum(body["upstream"]["retries"].values())
    return total


async def run_round(
    fleet: Fleet,
    ledger: list[RunLedger],
    round_no: int,
    *,
    runs: int,
    seed: int,
    agents_per_sidecar: int = 8,
    write_timeout_s: float = 600.0,
    drain_timeout_s: float = 180.0,
    tail_s: tuple[float, float] = (0.0, 3.0),
    watch: Watch | None = None,
    agent_timeout_s: float = 30.0,
) -> RoundReport:
    """One round: ``runs`` lifecycles through the sidecars under the round's kill schedule,
    kills going on for a random tail into the drain, then drain and check the database."""
    rng = Random(seed * 1_000 + round_no)
    agents = agents_per_sidecar * len(fleet.sidecars)
    shares = [runs // agents + (1 if n < runs % agents else 0) for n in range(agents)]
    first = len(ledger)  # the agents append this round's runs to the ledger
    never = asyncio.Event()  # agents stop at max_runs; the timeout bounds them
    watch = watch if watch is not None else Watch()
    regressions_before = len(watch.regressions)
    watch_stop = asyncio.Event()
    retries_before = await asyncio.to_thread(all_down_retries, fleet.sidecars)
    failovers_before = fleet.failovers()
    cpu_before = _cpu(fleet)
    watcher = asyncio.ensure_future(
        watch_regressions(fleet.database_url, ledger, watch_stop, watch, Random(rng.random()))
    )
    chaos = Chaos(fleet, Random(rng.random()), max_s=write_timeout_s + tail_s[1] + 10)
    started = time.monotonic()
    try:
        with chaos:
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        agent(
                            fleet.sidecars[n % len(fleet.sidecars)].url,
                            ledger,
                            stop=never,
                            max_runs=share,
                            round_no=round_no,
                            patches=PATCHES,
                            commit=False,
                            timeout_s=agent_timeout_s,
                        )
                        for n, share in enumerate(shares)
                    )
                ),
                write_timeout_s,
            )
            written = time.monotonic()
            await asyncio.sleep(rng.uniform(*tail_s))  # kills go on into the drain
        dead_lettered = []
        for k, sidecar in enumerate(fleet.sidecars):
            body = await asyncio.to_thread(wait_drained, sidecar, timeout_s=drain_timeout_s)
            if body["counters"]["dead_lettered"]:
                dead_lettered.append(f"sidecar {k}: dead letters {body['counters']}")
        drained = time.monotonic()
    finally:
        watch_stop.set()
        await asyncio.wait_for(watcher, 30)
    mine = ledger[first:]
    rows, duplicated = await read_rows(fleet.database_url)
    verdict = check(ledger, rows, duplicated)
    verdict.problems += dead_lettered  # the replicas refused nothing: none is expected
    retries_after = await asyncio.to_thread(all_down_retries, fleet.sidecars)
    cpu_after = _cpu(fleet)
    return RoundReport(
        round=round_no,
        runs=len(mine),
        ops_acked=sum(run.acked_ops() for run in mine),
        kills=len(chaos.kills),
        kills_mid_batch=sum(kill.mid_batch for kill in chaos.kills),
        write_s=written - started,
        drain_s=drained - written,
        failovers=fleet.failovers() - failovers_before,
        all_down_retries=retries_after - retries_before,
        regressions=watch.regressions[regressions_before:],
        verdict=verdict,
        cpu_s={name: cpu_after[name] - cpu_before[name] for name in cpu_before},
    )


def _cpu(fleet: Fleet) -> dict[str, float]:
    used = {
        "agents": time.process_time(),
        "sidecars": fleet.sidecars_cpu_s(),
        "replicas": fleet.replicas_cpu_s(),
        "startups": fleet.startup_cpu_s,
    }
    if fleet.postmaster_pid is not None:
        used["database"] = group_cpu_s(fleet.postmaster_pid)
    return used
