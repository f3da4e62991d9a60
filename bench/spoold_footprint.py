"""Soak of spoold's disk and memory footprint: real ``spoold`` and ``telemetry-server``.

    python bench/spoold_footprint.py                       # 300 runs/s for 300 s
    python bench/spoold_footprint.py --seconds 1200 --index-max-mb 8
    python bench/spoold_footprint.py --code-root /tmp/fp-old   # the daemons of another tree

Both daemons run on free 127.0.0.1 ports with their files in one temp dir. An
open-loop generator offers ``--rate`` runs per second (each a create, then the
PATCH that finishes it; realistic sizes from bench/server_bench.py, and
``--large-share`` of the runs carry a ``--large-kb`` metrics_json) whatever
the answers do, with at most ``--inflight`` runs in flight (an offer beyond
that is counted as skipped, not queued). The server is killed (SIGKILL) and
restarted on the same port every ``--kill-every`` seconds, so spoold queues
while it is down and drains when it is back. Every ``--sample-every``
seconds: spoold's VmRSS, and the size of every file in the spool directory.

At the end the server is left up until spoold's queue is empty, then stopped
and its SQLite file checked: every acknowledged create is there once, every
acknowledged PATCH in its final state. Prints the series and the verdict; exit
status 0 if every acknowledged write arrived, 2 otherwise. Not a test: it
asserts no timing, it reports figures.

With ``--json PATH`` (``bench/targets.py --only spoold_footprint``) it writes its
figures: the spool directory's growth per minute from ``SETTLED_S`` on (target
<= ``FLAT_MB_PER_MIN``: "flat after the first minutes"; the index kept every
snapshot for a week before, 8 MB/min at this load), its size and spoold's RSS
at most from then on, and how long the queue took to empty after the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import spoold_bench
from report import Figure, write_json
from server_bench import finish_payload, free_port, run_payload
from spoold_bench import BENCH_SPOOLD_ENV, HOST, Daemon, clean_env, http_json

MB = 1024 * 1024
#: The first minutes fill the files up to their working size: growth is measured after.
SETTLED_S = 300.0
#: Disk use "flat after the first minutes": at most this growth per minute on average
#: (high-water marks of outages still move it a little; 8 MB/min before the index bound).
FLAT_MB_PER_MIN = 1.0


@dataclass
class Acked:
    """What the daemons acknowledged: event_id -> the PATCH's final fields (None: create only)."""

    runs: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    offered: int = 0
    skipped: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, what: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    files: dict[str, int]
    depth: int | None

    @property
    def total_mb(self) -> float:
        return sum(self.files.values()) / MB


def spool_files(spool_dir: Path) -> dict[str, int]:
    """Every file under the spool directory and its size (vanishing files skipped)."""
    sizes: dict[str, int] = {}
    for path in spool_dir.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                sizes[str(path.relative_to(spool_dir))] = path.stat().st_size
    return sizes


async def one_run(
    session: aiohttp.ClientSession,
    base: str,
    rng: random.Random,
    acked: Acked,
    large: bool,
    large_kb: int,
) -> None:
    body = run_payload(rng, start=datetime.now(UTC))
    if large:
        body["metrics_json"] = {"samples": "m" * (large_kb * 1024), "tokens_in": 1}
    try:
        async with session.post(f"{base}/api/v1/runs", json=body) as reply:
            await reply.read()
            if reply.status != 201:
                acked.refuse(f"create {reply.status}")
                return
        acked.runs[body["event_id"]] = None
        finish = finish_payload(rng)
        async with session.patch(f"{base}/api/v1/runs/{body['event_id']}", json=finish) as reply:
            await reply.read()
            if reply.status in (200, 202):
                acked.runs[body["event_id"]] = finish
            else:
                acked.refuse(f"patch {reply.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        acked.refuse(type(exc).__name__)


async def offer(base: str, args: argparse.Namespace, acked: Acked) -> None:
    """Open loop: a run every 1/rate s for ``seconds``, at most ``inflight`` at once."""
    rng = random.Random(7)
    interval = 1.0 / args.rate
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=args.inflight)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.monotonic()
        total = int(args.rate * args.seconds)
        for i in range(total):  # bounded by count; paced by the schedule
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            acked.offered += 1
            if len(tasks) >= args.inflight:
                acked.skipped += 1
                continue
            large = rng.random() < args.large_share
            task = asyncio.create_task(one_run(session, base, rng, acked, large, args.large_kb))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=60)


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.db = workdir / "central.sqlite"
        self.spool_dir = workdir / "spool"
        self.server_port = free_port()
        self.upstream = f"http://{HOST}:{self.server_port}"
        self.samples: list[Sample] = []
        self.server_kills = 0
        self.started: list[Daemon] = []
        self.t0 = time.monotonic()

    def server(self) -> Daemon:
        argv = [sys.executable, "-m", "server", "--host", HOST, "--port", str(self.server_port)]
        daemon = Daemon(
            "server", [*argv, "--db", str(self.db)], clean_env({}), self.workdir / "server.log"
        )
        self.started.append(daemon)
        return daemon

    def spoold(self) -> Daemon:
        settings = dict(BENCH_SPOOLD_ENV)
        if self.args.index_max_mb is not None:
            settings["SPOOLD_INDEX_MAX_MB"] = str(self.args.index_max_mb)
        argv = [sys.executable, "-m", "spoold", "serve", "--host", HOST, "--port"]
        argv += [str(free_port()), "--upstream", self.upstream, "--spool-dir", str(self.spool_dir)]
        daemon = Daemon("spoold", argv, clean_env(settings), self.workdir / "spoold.log")
        self.started.append(daemon)
        return daemon

    def sample(self, spoold: Daemon, t0: float) -> None:
        status, health = http_json(spoold.base_url + "/health", timeout=10)
        depth = health["spool"]["depth"] if status == 200 and isinstance(health, dict) else None
        self.samples.append(
            Sample(
                t_s=time.monotonic() - t0,
                rss_mb=spoold.status_kb("VmRSS") / 1024,
                files=spool_files(self.spool_dir),
                depth=depth,
            )
        )
        last = self.samples[-1]
        print(
            f"  t={last.t_s:6.0f}s rss={last.rss_mb:6.1f} MB spool dir={last.total_mb:7.2f} MB"
            f" depth={last.depth}",
            flush=True,
        )

    async def supervise(self, server: Daemon, spoold: Daemon, done: asyncio.Event) -> Daemon:
        """Sample every sample_every s; kill -9 and restart the server every kill_every s."""
        t0 = self.t0 = time.monotonic()
        next_sample, next_kill = t0, t0 + self.args.kill_every
        while not done.is_set():
            now = time.monotonic()
            if now >= next_sample:
                await asyncio.to_thread(self.sample, spoold, t0)
                next_sample += self.args.sample_every
            if now >= next_kill:
                server.kill9()
                self.server_kills += 1
                await asyncio.sleep(self.args.down_s)
                server = self.server()
                await asyncio.to_thread(server.start)
                next_kill += self.args.kill_every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)
        return server

    async def run(self) -> int:
        server = self.server()
        server.start()
        spoold = self.spoold()
        spoold.start()
        acked = Acked()
        done = asyncio.Event()
        supervisor = asyncio.create_task(self.supervise(server, spoold, done))
        try:
            await offer(spoold.base_url, self.args, acked)
        finally:
            done.set()
            server = await supervisor
        drained_in = await asyncio.to_thread(self.wait_drained, spoold)
        self.sample(spoold, self.t0)
        spoold.stop()
        server.stop()
        return self.report(acked, drained_in)

    def wait_drained(self, spoold: Daemon) -> float:
        started = time.monotonic()
        for _ in range(int(self.args.drain_timeout / 0.5)):  # bounded
            status, health = http_json(spoold.base_url + "/health", timeout=10)
            if status == 200 and health["spool"]["depth"] == 0:
                return time.monotonic() - started
            time.sleep(0.5)
        return float("nan")

    def verify(self, acked: Acked) -> list[str]:
        problems: list[str] = []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            rows = {
                event_id: (status, succeeded, summary)
                for event_id, status, succeeded, summary in conn.execute(
                    "SELECT event_id, status, items_succeeded, output_summary FROM agent_runs"
                )
            }
        finally:
            conn.close()
        for event_id, finish in acked.runs.items():
            row = rows.get(event_id)
            if row is None:
                problems.append(f"{event_id}: acknowledged create missing")
            elif finish is not None and row != (
                finish["status"],
                finish["items_succeeded"],
                finish["output_summary"],
            ):
                problems.append(f"{event_id}: final state {row} != acknowledged {finish}")
        return problems

    def report(self, acked: Acked, drained_in: float) -> int:
        args = self.args
        print()
        print(
            f"soak: {args.rate} runs/s offered for {args.seconds:.0f} s (create + PATCH),"
            f" {args.large_share:.0%} with {args.large_kb} KB metrics_json; server killed"
            f" {self.server_kills} times; SPOOLD_INDEX_MAX_MB={args.index_max_mb or 'default'};"
            f" code: {args.code_root}"
        )
        print(
            f"offered {acked.offered}, skipped {acked.skipped} (over {args.inflight} in flight),"
            f" acknowledged {len(acked.runs)} creates,"
            f" {sum(1 for f in acked.runs.values() if f is not None)} PATCHes,"
            f" refused {acked.refused}; queue empty {drained_in:.1f} s after the load"
        )
        names = sorted({name for s in self.samples for name in s.files})
        shown = [n for n in names if max(s.files.get(n, 0) for s in self.samples) >= 256 * 1024]
        header = ["t_s", "rss_MB", "dir_MB", "depth", *shown]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for s in self.samples:
            cells = [f"{s.t_s:.0f}", f"{s.rss_mb:.1f}", f"{s.total_mb:.2f}", str(s.depth)]
            cells += [f"{s.files.get(n, 0) / MB:.2f}" for n in shown]
            print("| " + " | ".join(cells) + " |")
        problems = self.verify(acked)
        print(
            f"other files (each < 256 KB): {len(names) - len(shown)}; verified"
            f" {len(acked.runs)} acknowledged runs on the server: {len(problems)} problems"
        )
        for problem in problems[:10]:
            print("  " + problem)
        if args.json is not None:
            verified = not problems and bool(acked.runs)
            write_json(args.json, self.figures(drained_in), verified=verified)
        return 2 if problems else 0

    def figures(self, drained_in: float) -> list[Figure]:
        """The footprint after the first minutes (the samples from SETTLED_S on)."""
        args = self.args
        scenario = (
            f"spoold soak {args.rate:.0f} runs/s {args.seconds:.0f} s, server killed every "
            f"{args.kill_every:.0f} s"
        )
        settled = [s for s in self.samples if s.t_s >= SETTLED_S] or self.samples[-2:]
        first, last = settled[0], settled[-1]
        # The least-squares slope: one sample taken during an outage's backlog (a WAL at
        # its high-water mark for a moment) does not decide it, as first-to-last would.
        growth = (
            statistics.linear_regression(
                [s.t_s / 60 for s in settled], [s.total_mb for s in settled]
            ).slope
            if len(settled) >= 2
            else math.nan
        )
        note = (
            f"least-squares slope of {len(settled)} samples; {first.total_mb:.1f} MB at "
            f"{first.t_s:.0f} s, {last.total_mb:.1f} MB at the end"
        )
        return [
            Figure(scenario, "spool dir growth MB/min", growth, FLAT_MB_PER_MIN, False, None, note),
            Figure(scenario, "spool dir max MB", max(s.total_mb for s in settled)),
            Figure(scenario, "RSS max MB", max(s.rss_mb for s in settled), note="after 5 min"),
            Figure(scenario, "queue empty after load s", drained_in, higher_is_better=False),
        ]

    def stop_all(self) -> None:
        for daemon in self.started:
            with contextlib.suppress(Exception):
                daemon.stop(grace_s=15)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="runs offered per second")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long the load lasts")
    parser.add_argument("--inflight", type=int, default=128, help="runs in flight at most")
    parser.add_argument("--large-share", type=float, default=0.05)
    parser.add_argument("--large-kb", type=int, default=64, help="size of a large metrics_json")
    parser.add_argument("--kill-every", type=float, default=45.0, help="server kill period, s")
    parser.add_argument("--down-s", type=float, default=3.0, help="server down time per kill")
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--index-max-mb", type=int, default=None, help="SPOOLD_INDEX_MAX_MB")
    parser.add_argument(
        "--code-root", type=Path, default=spoold_bench.ROOT, help="tree the daemons run from"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", type=Path, help="write the figures here (bench/report.py)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.code_root.resolve()
    spoold_bench.ROOT = root  # the daemons' cwd: ``python -m`` imports from it first
    os.environ["PYTHONPATH"] = str(root)
    workdir = Path(tempfile.mkdtemp(prefix="spoold-footprint-"))
    soak = Soak(args, workdir)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return asyncio.run(soak.run())
    finally:
        soak.stop_all()
        if args.keep:
            print(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
