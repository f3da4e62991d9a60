"""Benchmark of spoold draining a big backlog: real ``spoold`` and ``telemetry-server`` processes.

    python bench/spoold_bench.py --rows 100000            # ~2-3 minutes
    python bench/spoold_bench.py --rows 1000000 --json /tmp/spoold.json   # ~9-10 minutes
    python bench/spoold_bench.py --quick                   # smoke run, 20,000 ops, < 1 minute
    python bench/spoold_bench.py --code-root /tmp/old-tree # run the daemons of another tree

Every daemon is started here on a free 127.0.0.1 port with its files in one temp
dir, and stopped by its PID at the end (SIGTERM, SIGKILL after a grace), also when
a step fails or the bench is interrupted. In order:

1. **Fill.** ``--rows`` creates (fleet-shaped runs, bench/server_bench.py
   ``run_payload``) go into a spoold whose upstream is down, through its public
   ``POST /api/v1/runs/batch`` (``SPOOLD_BATCH_MAX_ITEMS`` runs per request, 3
   senders): exactly what spoold writes in production. That spoold is stopped.
2. **Start-up on the backlog** (upstream down): from ``exec`` to the first
   ``/health`` 200 and to the first create answered 201 (the figure is the later
   of the two, "answering writes"); then ``kill -9`` and the same again (crash
   recovery on the backlog). The figure's value is the worse of the two starts.
3. **The server's batch ingest**, the baseline: ``POST /api/v1/runs/batch`` of 100
   runs per request at concurrency 4 on a fresh database, as bench/server_bench.py.
4. **Drain** to a live server on another fresh database: spoold is started on the
   backlog pointed at it; the drain rate is timed from the first ``/health`` 200
   over the first half of the backlog (nothing else offered), and quoted as a %
   of 3. Then, while the rest drains, an open-loop generator offers 1,000
   creates/s (one every 1/1000 s whatever the answers do; latency measured from
   each request's *scheduled* time, so a stall is not hidden by the generator
   waiting for it; the generator's garbage collector is off meanwhile, so its own
   pauses are not counted as spoold's) for up to 15 s, cut to what the drain has
   left: the accept p99 during the drain. The drain rate while that load runs is shown too.
   **4b. The ceiling under the same load**, once spoold is stopped: the ceiling
   process of bench/spoold_accept.py (aiohttp + the same validation + one fsync per
   group of requests, no queue) gets the same open-loop creates for the same time
   while a forked loader posts ``mode=upsert`` batches of fresh fleet-shaped runs
   (``SPOOLD_BATCH_SIZE`` each, at most 2 in flight) to the same live server at the
   drain rate just measured: the server, the generator and the cores compete as in
   4, spoold's queue does not. Its p99 is an information figure next to spoold's,
   with their ratio; the loader's runs are left out of the check below.
5. **Check**: spoold is stopped, then the server; every create spoold
   acknowledged (fill, probes, paced load) must be a row on the server, once,
   with nothing extra (``verified``).

``--json PATH`` writes the figures (bench/report.py) with their targets: accept
p99 at 1,000/s during the drain (<= 25 ms), start-up on the backlog (<= 1 s),
drain as a % of the server's batch ingest (>= 80%), and information figures
(among them the ceiling's accept p99 of 4b and spoold's as a multiple of it).
``--profile DIR`` records py-spy of spoold (and the server) during the drain.

The load generator is bench/loadgen.py (uvloop when installed) in this process;
the machine's cores are shared with it. Exit status: 0 if every target passed and
every check held, 1 if a target was missed, 2 if a check failed or a step broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsync_probe import FsyncProbe, ProbeWindow
from loadgen import Client, GcPauses, LabelStats, LoadResult, event_loop_name, run_load
from report import Figure, format_row, write_json
from server_bench import Batch, Profiler, free_port, run_payload, tail

from spoold.config import SpooldConfig

try:  # the same event loop as loadgen uses, when installed
    import uvloop
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
SAMPLE_EVERY_S = 0.2
BENCH_SPOOLD_ENV = {"SPOOLD_SHUTDOWN_DEADLINE_S": "2"}


# ---- processes ------------------------------------------------------------------------


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any SPOOLD_* / TELEMETRY_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOLD_", "TELEMETRY_"))}
    env.pop("STATE_DIRECTORY", None)
    env.update(extra)
    return env


def http_json(url: str, *, timeout: float = 5.0) -> tuple[int, Any]:
    """GET url (loopback only); (status, parsed body). Non-2xx answers are returned too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def post_json(url: str, body: Any, *, timeout: float = 5.0) -> int:
    request = urllib.request.Request(
        url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class Daemon:
    """One daemon subprocess (spoold or telemetry-server); every stop is by its PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.port = int(argv[argv.index("--port") + 1])
        self.base_url = f"http://{HOST}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_s = math.nan
        self.cwd = ROOT

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait for the first /health 200; returns the seconds that took."""
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = started + timeout_s
        while time.monotonic() < deadline:  # bounded by timeout_s
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; log tail:\n"
                    f"{tail(self.log_path)}"
                )
            with contextlib.suppress(OSError):
                if http_json(self.base_url + "/health", timeout=1)[0] == 200:
                    self.ready_s = time.monotonic() - started
                    return self.ready_s
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s")

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM by PID, SIGKILL after grace_s; idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        os.kill(process.pid, signal.SIGTERM)
        try:
            return process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            return process.wait(30)

    def kill9(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)

    def status_kb(self, key: str) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except (OSError, AssertionError):
            pass
        return 0

    def cpu_seconds(self) -> float:
        """user + system CPU of the process, all its threads."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AssertionError):
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def health(self) -> dict[str, Any]:
        status, body = http_json(self.base_url + "/health", timeout=10)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"{self.name} /health answered {status}")
        return body


class Daemons:
    """Every daemon this bench started, so that ``stop_all`` (in finally) reaches them all."""

    def __init__(
        self,
        workdir: Path,
        log_level: str | None,
        extra_env: dict[str, str] | None = None,
        code_root: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.log_level = log_level
        self.extra_env = extra_env or {}
        #: The source tree the daemons run from (PYTHONPATH and working directory).
        self.code_root = (code_root or ROOT).resolve()
        self.started: list[Daemon] = []

    def _env(self, settings: dict[str, str]) -> dict[str, str]:
        return clean_env({**settings, "PYTHONPATH": str(self.code_root)})

    def _python(self, module: str) -> list[str]:
        return [sys.executable, "-m", module]

    def server(self, name: str, db: Path) -> Daemon:
        env = self._env({"TELEMETRY_LOG_LEVEL": self.log_level} if self.log_level else {})
        argv = [*self._python("server"), "--host", HOST, "--port", str(free_port())]
        daemon = Daemon(name, [*argv, "--db", str(db)], env, self.workdir / f"{name}.log")
        daemon.cwd = self.code_root
        self.started.append(daemon)
        return daemon

    def spoold(
        self, name: str, spool_dir: Path, upstream: str, extra: dict[str, str] | None = None
    ) -> Daemon:
        settings = {**BENCH_SPOOLD_ENV, **self.extra_env, **(extra or {})}
        if self.log_level:
            settings["SPOOLD_LOG_LEVEL"] = self.log_level
        argv = [*self._python("spoold"), "serve", "--host", HOST, "--port", str(free_port())]
        argv += ["--upstream", upstream, "--spool-dir", str(spool_dir)]
        daemon = Daemon(name, argv, self._env(settings), self.workdir / f"{name}.log")
        daemon.cwd = self.code_root
        self.started.append(daemon)
        return daemon

    def ceiling(self, name: str, path: Path) -> Daemon:
        """The ceiling process of bench/spoold_accept.py (aiohttp + the contract's validation
        + one fsync per group, no queue), appending to ``path``; always this tree's code."""
        argv = [sys.executable, str(ROOT / "bench" / "spoold_accept.py"), "ceiling",
                "--port", str(free_port()), "--file", str(path)]  # fmt: skip
        daemon = Daemon(
            name, argv, clean_env({"PYTHONPATH": str(ROOT)}), self.workdir / f"{name}.log"
        )
        self.started.append(daemon)
        return daemon

    def stop_all(self) -> None:
        for daemon in self.started:
            with contextlib.suppress(Exception):
                daemon.stop(grace_s=15)


class RssSampler:
    """Samples VmRSS of one process every 0.2 s in a thread (bounded by ``max_s``)."""

    def __init__(self, daemon: Daemon, max_s: float = 900.0) -> None:
        self.daemon = daemon
        self.max_s = max_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            kb = self.daemon.status_kb("VmRSS")
            if kb:
                self.samples.append(kb)
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def max_mb(self) -> float:
        return max(self.samples, default=0) / 1024


# ---- filling a backlog over HTTP (upstream down) -------------------------------------


@dataclass
class FillBatches:
    """``POST /api/v1/runs/batch`` of ``size`` fresh runs per operation, ``count`` runs in all.

    Exactly what an agent's batch write is; spoold spools each run as one create.
    """

    count: int
    size: int
    keep_ids: bool

    async def __call__(self, client: Client, seq: int) -> None:
        first = seq * self.size
        n = min(self.size, self.count - first)
        if n <= 0:
            return
        rng = random.Random(seq)
        now = datetime.now(UTC)
        runs = [run_payload(rng, start=now) for _ in range(n)]
        status, answer = await client.request("POST", "/api/v1/runs/batch", json=runs, label="fill")
        if status != 200 or not isinstance(answer, dict):
            client.recording.note("refused", n)
            return
        refused = {error.get("index") for error in answer.get("errors", ())}
        client.recording.note("inserted", int(answer.get("inserted", 0)))
        client.recording.note("refused", len(refused))
        if self.keep_ids:
            for index, run in enumerate(runs):
                if index not in refused:
                    client.recording.note("acked", run["event_id"])


@dataclass
class Fill:
    ops: int
    requested: int
    seconds: float
    groups: int
    spool_bytes: int
    failures: str
    spoold_cpu: float
    client_cpu: float
    acked: list[str]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else math.nan

    def describe(self) -> str:
        per_group = self.ops / self.groups if self.groups else math.nan
        return (
            f"{self.ops:,} of {self.requested:,} runs in {self.seconds:.1f} s ="
            f" {self.rate:,.0f} ops/s ({self.groups:,} spool groups, {per_group:.0f} ops/group;"
            f" spool {self.spool_bytes / 2**20:,.0f} MiB; non2xx/err {self.failures};"
            f" spoold CPU {self.spoold_cpu:.0f}%, client CPU {self.client_cpu:.0f}%)"
        )


def fill_over_http(
    daemon: Daemon, count: int, *, senders: int, max_seconds: float, keep_ids: bool
) -> Fill:
    """Put ``count`` creates into a running spoold through its public batch endpoint.

    ``senders`` batches in flight, ``SPOOLD_BATCH_MAX_ITEMS`` runs each (the most
    an agent may send). The daemon's upstream should be down, so nothing drains
    meanwhile. Bounded by ``max_seconds``.
    """
    size = SpooldConfig().batch_max_items
    if count <= 0:
        return Fill(0, 0, 0.0, 0, 0, "0/0", math.nan, math.nan, [])
    before = daemon.health()["spool"]
    cpu_before = daemon.cpu_seconds()
    result = run_load(
        daemon.base_url,
        FillBatches(count, size, keep_ids),
        name=f"fill {count:,} runs, {size}/batch",
        concurrency=senders,
        max_ops=-(-count // size),
        max_seconds=max_seconds,
        request_timeout_s=60,
    )
    cpu = 100 * (daemon.cpu_seconds() - cpu_before) / result.elapsed_s
    print(result.format(), file=sys.stderr)
    after = daemon.health()["spool"]
    return Fill(
        ops=sum(result.recording.notes.get("inserted", [])),
        requested=count,
        seconds=result.elapsed_s,
        groups=int(after["groups"]) - int(before["groups"]),
        spool_bytes=int(after["bytes"]),
        failures=failures_of(result),
        spoold_cpu=cpu,
        client_cpu=result.client_cpu_pct,
        acked=result.recording.notes.get("acked", []),
    )


# ---- open-loop paced load -------------------------------------------------------------


@dataclass
class PacedResult:
    rate: float
    planned: int
    sent: int
    span_s: float
    from_schedule: LabelStats
    service: LabelStats
    acked: list[str]
    max_send_lag_ms: float
    client_cpu_s: float
    #: This process's garbage collections while it sent (each one delays the schedule).
    gc_collections: int = 0
    gc_longest_ms: float = 0.0

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.span_s if self.span_s > 0 else math.nan

    @property
    def failures(self) -> str:
        return f"{self.from_schedule.non_2xx}/{sum(self.from_schedule.errors.values())}"


async def _paced(
    base_url: str, rate: float, bodies: list[dict[str, Any]], max_seconds: float, timeout_s: float
) -> PacedResult:
    count = len(bodies)
    from_schedule, service = LabelStats(), LabelStats()
    acked: list[str] = []
    max_lag = 0.0
    clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
    ) as session:

        async def one(body: dict[str, Any], scheduled: float) -> None:
            nonlocal max_lag
            sent = clock()
            max_lag = max(max_lag, sent - scheduled)
            data = orjson.dumps(body)
            try:
                async with session.post(
                    base_url + "/api/v1/runs",
                    data=data,
                    headers={"Content-Type": "application/json"},
                ) as response:
                    raw = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                for stats in (from_schedule, service):
                    stats.errors[type(exc).__name__] += 1
                return
            done = clock()
            from_schedule.latencies.append(done - scheduled)
            service.latencies.append(done - sent)
            from_schedule.statuses[status] += 1
            service.statuses[status] += 1
            if status == 201 and orjson.loads(raw).get("status") == "created":
                acked.append(body["event_id"])

        cpu_started = time.process_time()
        first = clock() + 0.05
        tasks: list[asyncio.Task[None]] = []
        for i, body in enumerate(bodies):  # bounded: count, and max_seconds
            scheduled = first + i / rate
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if clock() - first > max_seconds:
                break
            tasks.append(asyncio.create_task(one(body, scheduled)))
        last_sent = clock()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s + 1)
            for task in pending:
                task.cancel()
        cpu_s = time.process_time() - cpu_started
    return PacedResult(
        rate,
        count,
        len(tasks),
        last_sent - first,
        from_schedule,
        service,
        acked,
        max_lag * 1e3,
        cpu_s,
    )


def paced_load(
    base_url: str, *, rate: float, seconds: float, seed: int, timeout_s: float = 30.0
) -> PacedResult:
    """Send ``rate`` creates per second for ``seconds`` (open loop), bounded in count and time.

    The cyclic garbage collector is off meanwhile (a bounded run: at most ``seconds`` + 5
    of garbage waits for the collection after it). On, it walked this process's heap (the
    fill's million acknowledged ids, the bodies) in full collections of up to ~100 ms at
    1M, and 13-40 ms with that heap frozen, during which no request was sent: the wait
    was counted as the daemon's latency (every request is timed from its schedule)."""
    rng = random.Random(seed)
    bodies = [run_payload(rng, start=datetime.now(UTC)) for _ in range(int(rate * seconds))]
    coro = _paced(base_url, rate, bodies, seconds + 5, timeout_s)
    gc.collect()
    gc.disable()
    try:
        with GcPauses() as pauses:
            result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    finally:
        gc.enable()
    result.gc_collections, result.gc_longest_ms = pauses.count, 1e3 * pauses.longest_s
    return result


# ---- the drain's load on the server, without spoold (for the ceiling) ----------------


@dataclass
class LoaderResult:
    sent_ids: list[str]  # every run sent (a timed-out batch may still have landed)
    acked: int  # runs the server answered 200 for
    batches: int
    span_s: float
    failures: int  # batches answered non-200 or not at all

    @property
    def rate(self) -> float:
        return self.acked / self.span_s if self.span_s > 0 else math.nan


async def _send_upserts(
    base_url: str, rate: float, batch: int, seconds: float, ready: Any
) -> LoaderResult:
    """``batch``-run ``mode=upsert`` batches of fresh fleet-shaped creates, ``rate`` runs/s
    (one batch every batch/rate s, at most LOADER_INFLIGHT in flight), for ``seconds``."""
    rng = random.Random("drain-loader")
    now = datetime.now(UTC)
    templates = [run_payload(rng, start=now) for _ in range(2000)]
    sent_ids: list[str] = []
    acked = failures = 0
    slots = asyncio.Semaphore(LOADER_INFLIGHT)
    connector = aiohttp.TCPConnector(limit=LOADER_INFLIGHT)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def post(items: list[dict[str, Any]]) -> None:
            nonlocal acked, failures
            try:
                async with session.post(
                    base_url + "/api/v1/runs/batch?mode=upsert",
                    data=orjson.dumps(items),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            finally:
                slots.release()
            acked += len(items) if ok else 0
            failures += not ok

        ready.set()
        interval = batch / rate
        first = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        for i in range(int(seconds / interval) + 1):  # bounded: count, and seconds
            delay = first + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - first > seconds:
                break
            await slots.acquire()
            items = []
            for _ in range(batch):
                event_id = str(uuid.uuid4())
                run = {**rng.choice(templates), "event_id": event_id}
                run["run_id"] = f"{run['run_id'][:-8]}{event_id[:8]}"
                items.append({"event_id": event_id, "create": run})
                sent_ids.append(event_id)
            tasks.append(asyncio.create_task(post(items)))
        if tasks:
            await asyncio.wait(tasks, timeout=70)
        span = time.perf_counter() - first  # to the last answer
    return LoaderResult(sent_ids, acked, len(tasks), span, failures)


def _loader_child(conn: Any, ready: Any, base_url: str, rate: float, batch: int,
                  seconds: float) -> None:  # fmt: skip
    try:
        coro = _send_upserts(base_url, rate, batch, seconds, ready)
        conn.send(uvloop.run(coro) if uvloop is not None else asyncio.run(coro))
    except BaseException as exc:  # report, do not hang the parent
        conn.send(repr(exc))
    finally:
        conn.close()


class DrainLoader:
    """A forked process posting the drain's batches to the server (stopped by its PID)."""

    def __init__(self, base_url: str, *, rate: float, seconds: float) -> None:
        ctx = multiprocessing.get_context("fork")
        self.ready = ctx.Event()
        self.seconds = seconds
        self._conn, child = ctx.Pipe(duplex=False)
        batch = SpooldConfig().batch_size
        self.process = ctx.Process(
            target=_loader_child, args=(child, self.ready, base_url, rate, batch, seconds),
            daemon=True,
        )  # fmt: skip
        self.process.start()
        child.close()

    def result(self) -> LoaderResult:
        """Wait for the loader's report (bounded), then make sure it is gone."""
        try:
            if not self._conn.poll(self.seconds + 90):
                raise RuntimeError(f"drain loader {self.process.pid} did not report")
            answer = self._conn.recv()
            if not isinstance(answer, LoaderResult):
                raise RuntimeError(f"drain loader failed: {answer}")
            return answer
        finally:
            self.stop()

    def stop(self) -> None:
        self.process.join(5)
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.join(10)


# ---- the run ---------------------------------------------------------------------------

#: Concurrent ``POST /api/v1/runs/batch`` senders that fill the backlog.
FILL_SENDERS = 3
#: 1,000,000 ops take ~0.8 GiB of spool: a higher cap keeps the cap out of the figures.
BIG_ENV = {"SPOOLD_MAX_SPOOL_MB": "2048"}
PACED_RATE = 1000.0
PACED_MAX_S = 15.0
P99_TARGET_MS = 25.0
START_TARGET_S = 1.0
DRAIN_TARGET_PCT = 80.0
#: Batches the drain loader keeps in flight (the ceiling scenario).
LOADER_INFLIGHT = 2


def failures_of(result: LoadResult, label: str | None = None) -> str:
    stats = result.stats(label)
    return f"{stats.non_2xx}/{sum(stats.errors.values())}"


def quantiles(stats: LabelStats) -> tuple[float, float, float]:
    """p50, p99 and max in ms."""
    return stats.quantiles_ms()


@dataclass
class CeilingRun:
    paced: PacedResult  # the creates offered to the ceiling
    loader: LoaderResult  # the drain's load on the server meanwhile
    disk: ProbeWindow | None  # the fsync probe meanwhile


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rows = int(args.rows)
        self.paced_rate = float(args.paced_rate)
        self.workdir = workdir
        extra = dict(item.split("=", 1) for item in args.spoold_env)
        self.daemons = Daemons(workdir, args.log_level, extra, args.code_root)
        self.spool_dir = workdir / "spool"
        # Nothing listens here: an upstream that is down (connection refused at once).
        self.dead_upstream = f"http://{HOST}:{free_port()}"
        self.figures: list[Figure] = []
        self.problems: list[str] = []
        self.acked: list[str] = []
        #: Runs the ceiling scenario's loader sent to the drain's server (not spoold's).
        self.loader_ids: list[str] = []
        self.loader_acked = 0
        self.ingest_rate = math.nan
        #: Every create spoold acknowledged is on the server, once, and nothing else is.
        self.verified = False
        #: The independent fsync probe (bench/fsync_probe.py), while the steps run.
        self.probe: FsyncProbe | None = None

    def figure(self, scenario: str, metric: str, value: float, **kwargs: Any) -> None:
        figure = Figure(scenario, metric, float(value), rows=self.rows, **kwargs)
        self.figures.append(figure)
        print(format_row(figure), file=sys.stderr)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)
            print(f"CHECK FAILED: {what}", file=sys.stderr)

    def stop(self, daemon: Daemon) -> None:
        code = daemon.stop()
        self.check(code == 0, f"{daemon.name} exited with {code} on SIGTERM")

    # -- 1 --

    def fill(self) -> None:
        print(f"1. filling {self.rows:,} ops over POST /api/v1/runs/batch", file=sys.stderr)
        filler = self.daemons.spoold("spoold-fill", self.spool_dir, self.dead_upstream, BIG_ENV)
        filler.start()
        fill = fill_over_http(
            filler, self.rows, senders=FILL_SENDERS, max_seconds=600, keep_ids=True
        )
        self.stop(filler)
        self.acked += fill.acked
        print(f"  {fill.describe()}", file=sys.stderr)
        self.figure("spoold backlog fill over HTTP (upstream down)", "ops/s", fill.rate)
        self.check(fill.ops == self.rows, f"fill: {fill.ops:,} of {self.rows:,} acknowledged")

    # -- 2 --

    def probe_create(self, daemon: Daemon, started: float) -> float:
        """Seconds from ``started`` to the first 201 of a create (bounded: 30 s)."""
        body = run_payload(random.Random(), start=datetime.now(UTC))
        while time.monotonic() - started < 30:
            with contextlib.suppress(OSError):
                if post_json(daemon.base_url + "/api/v1/runs", body) == 201:
                    self.acked.append(body["event_id"])
                    return time.monotonic() - started
            time.sleep(0.005)
        return math.nan

    def start_up(self) -> None:
        print(
            "2. start-up on the backlog, upstream down (clean, then after kill -9)", file=sys.stderr
        )
        starts: list[float] = []
        for name in ("spoold-start", "spoold-after-kill9"):
            sidecar = self.daemons.spoold(name, self.spool_dir, self.dead_upstream, BIG_ENV)
            started = time.monotonic()
            ready = sidecar.start()
            first = self.probe_create(sidecar, started)
            starts.append(max(ready, first))
            print(f"  {name}: /health 200 after {ready:.2f} s, first create 201 after"
                  f" {first:.2f} s", file=sys.stderr)  # fmt: skip
            if name == "spoold-start":
                sidecar.kill9()
            else:
                self.stop(sidecar)
        self.figure(
            "spoold start-up on the backlog (exec to writes answered)",
            "s",
            max(starts),
            target=START_TARGET_S,
            higher_is_better=False,
            note=f"clean start {starts[0]:.2f} s, after kill -9 {starts[1]:.2f} s",
        )

    # -- 3 --

    def server_ingest(self) -> None:
        print("3. server batch ingest (100 runs/batch, c=4)", file=sys.stderr)
        server = self.daemons.server("server-ingest", self.workdir / "ingest.sqlite")
        server.start()
        rng = random.Random("ingest")
        now = datetime.now(UTC)
        count = max(50, min(1000, self.rows // 100))
        batches = [[run_payload(rng, start=now) for _ in range(100)] for _ in range(count)]
        warm = [[run_payload(rng, start=now) for _ in range(100)] for _ in range(5)]
        run_load(server.base_url, Batch(warm), name="warmup", concurrency=2, max_ops=5)
        result = run_load(
            server.base_url,
            Batch(batches),
            name="server batch ingest",
            concurrency=4,
            max_ops=len(batches),
            max_seconds=120,
        )
        print(result.format(), file=sys.stderr)
        inserted = len(result.recording.notes.get("acked", []))
        self.ingest_rate = inserted / result.elapsed_s
        self.stop(server)
        self.figure(
            "server batch ingest, 100 runs/batch, c=4 (baseline)", "runs/s", self.ingest_rate
        )
        self.check(inserted == 100 * len(batches), f"ingest: {inserted} of {100 * len(batches)}")

    # -- 4 --

    def drain(self) -> None:
        db = self.workdir / "drain.sqlite"
        server = self.daemons.server("server-drain", db)
        server.start()
        sidecar = self.daemons.spoold("spoold-drain", self.spool_dir, server.base_url, BIG_ENV)
        profilers: list[Profiler | None] = []
        with RssSampler(sidecar) as rss:
            sidecar.start()
            profilers.append(Profiler.start(self.args.profile, sidecar.pid, "drain spoold"))
            profilers.append(Profiler.start(self.args.profile, server.pid, "drain server"))
            backlog = int(sidecar.health()["spool"]["depth"])
            print(f"4. drain of {backlog:,} ops to a live server", file=sys.stderr)
            began = time.monotonic()
            cpu0 = sidecar.cpu_seconds()
            _, _, half = self.wait_forwarded(sidecar, backlog // 2, bound_s=600)
            clean_s = time.monotonic() - began
            clean_cpu = sidecar.cpu_seconds() - cpu0
            rate = half / clean_s
            left_s = (backlog - half) / rate if rate > 0 else 0.0
            paced_s = max(2.0, min(PACED_MAX_S, 0.8 * left_s))
            print(f"  {half:,} ops in {clean_s:.1f} s = {rate:,.0f} ops/s; now {self.paced_rate:,.0f}"
                  f" creates/s for {paced_s:.1f} s", file=sys.stderr)  # fmt: skip
            before = int(sidecar.health()["drain"]["operations_forwarded"])
            cpu_before = sidecar.cpu_seconds()
            paced_from = time.time()
            paced = paced_load(sidecar.base_url, rate=self.paced_rate, seconds=paced_s, seed=22)
            disk = self.probe.window(paced_from, time.time()) if self.probe else None
            paced_cpu = 100 * (sidecar.cpu_seconds() - cpu_before) / max(paced.span_s, 1e-9)
            after = sidecar.health()
            during = int(after["drain"]["operations_forwarded"]) - before
            overlap = int(after["spool"]["depth"]) > 0
            self.acked += paced.acked
            depth, _, _ = self.wait_forwarded(sidecar, None, bound_s=600)
            total_s = time.monotonic() - began
        for profiler in profilers:
            if profiler is not None:
                profiler.stop()
        health = sidecar.health()
        counters = health["counters"]
        self.stop(sidecar)
        drain_rate = during / max(paced.span_s, 1e-9) if overlap else rate
        ceiling = self.ceiling_during_ingest(server, drain_rate, paced_s)
        self.stop(server)
        p50, p99, worst = quantiles(paced.from_schedule)
        _, s99, _ = quantiles(paced.service)
        on_time = paced.sent >= 0.95 * paced.planned
        print(f"  paced: sent {paced.sent}/{paced.planned} at {paced.achieved_rate:,.0f}/s;"
              f" from schedule p50 {p50:.2f} p99 {p99:.2f} max {worst:.1f} ms; from send p99"
              f" {s99:.2f} ms; max send lag {paced.max_send_lag_ms:.1f} ms; client GC"
              f" {paced.gc_collections} collections, longest {paced.gc_longest_ms:.1f} ms", file=sys.stderr)  # fmt: skip
        at_target_rate = self.paced_rate == PACED_RATE  # the target is for 1,000/s only
        self.figure(
            f"spoold accept, {self.paced_rate:,.0f} creates/s offered during the drain",
            "p99 ms",
            p99,
            target=P99_TARGET_MS if at_target_rate else None,
            higher_is_better=False,
            note=f"p50 {p50:.1f}, max {worst:.0f} ms, {paced.sent:,} sent in {paced.span_s:.1f} s,"
            f" non2xx/err {paced.failures}, spoold CPU {paced_cpu:.0f}%"
            + ("" if overlap else "; the drain ended before the load did"),
        )
        self.disk_figure("during spoold's paced load", disk)
        if ceiling is not None:
            self.disk_figure("during the ceiling's paced load", ceiling.disk)
            c50, c99, cworst = quantiles(ceiling.paced.from_schedule)
            self.figure(
                f"ceiling accept {self.paced_rate:,.0f}/s, server ingesting drain load",
                "p99 ms",
                c99,
                higher_is_better=False,  # information: what this machine allows under that load
                note=f"aiohttp+validation+group fsync, no queue (bench/spoold_accept.py);"
                f" p50 {c50:.1f}, max {cworst:.0f} ms, non2xx/err {ceiling.paced.failures};"
                f" loader {ceiling.loader.rate:,.0f} runs/s of the drain's {drain_rate:,.0f};"
                f" the {P99_TARGET_MS:g} ms target "
                + ("is within reach" if c99 <= P99_TARGET_MS else "is not reached even here"),
            )
            self.figure(
                "spoold accept p99 during the drain / ceiling's, same load",
                "x",
                p99 / c99,
                higher_is_better=False,  # 1.0: spoold adds nothing to what the machine allows
            )
        share = 100 * rate / self.ingest_rate
        self.figure(
            "spoold drain to a live server, % of the server's batch ingest",
            "%",
            share,
            target=DRAIN_TARGET_PCT,
            note=f"{rate:,.0f} ops/s over the first {half:,} ops, spoold CPU"
            f" {100 * clean_cpu / clean_s:.0f}%",
        )
        self.figure(
            f"spoold drain rate while {self.paced_rate:,.0f} creates/s are offered",
            "ops/s",
            during / max(paced.span_s, 1e-9),
        )
        self.figure("spoold drain, whole backlog + paced load", "s", total_s)
        self.figure("spoold RSS max during the drain", "MB", rss.max_mb)
        self.check(on_time, "the paced generator fell behind its schedule")
        # A 503 (admission, with Retry-After) is spoold refusing what it cannot take in time:
        # in the figure's note, not a failed check; an error (no answer at all) is one.
        self.check(not paced.from_schedule.errors, f"paced load: errors {paced.failures}")
        self.check(depth == 0, f"drain: {depth} ops left")
        self.check(
            counters["accepted"]
            == counters["forwarded"] + counters["queued"] + counters["dead_lettered"],
            f"accounting does not add up: {counters}",
        )
        self.check(counters["dead_lettered"] == 0, f"dead letters: {counters}")
        self.verify(db)

    def disk_figure(self, during: str, disk: ProbeWindow | None) -> None:
        """The independent fsync probe's worst sample in a paced load's window: a disk
        stall delays every fsync, the ceiling's and spoold's alike (bench/fsync_probe.py)."""
        if disk is None or not disk.samples:
            return
        self.figure(
            f"disk fsync max {during}",
            "ms",
            disk.worst_ms,
            higher_is_better=False,
            note=f"an independent 4 KiB fdatasync every 20 ms: {disk.describe()}",
        )

    def ceiling_during_ingest(
        self, server: Daemon, drain_rate: float, seconds: float
    ) -> CeilingRun | None:
        """The same open-loop creates against the ceiling process of bench/spoold_accept.py
        while a loader posts the drain's batches (``drain_rate`` runs/s) to the same server:
        the accept latency this machine allows under that competition, without spoold."""
        if not drain_rate > 0:
            self.check(False, f"ceiling: no drain rate to replay ({drain_rate})")
            return None
        ceiling = self.daemons.ceiling("ceiling-drain", self.workdir / "ceiling-drain.bin")
        ceiling.start()
        print(f"4b. ceiling: {self.paced_rate:,.0f} creates/s for {seconds:.1f} s while"
              f" {drain_rate:,.0f} runs/s of upsert batches go to the server", file=sys.stderr)  # fmt: skip
        loader = DrainLoader(server.base_url, rate=drain_rate, seconds=seconds + 1.0)
        try:
            if not loader.ready.wait(60):
                raise RuntimeError("drain loader not ready in 60 s")
            time.sleep(0.5)  # the server is ingesting before the first create
            paced_from = time.time()
            paced = paced_load(ceiling.base_url, rate=self.paced_rate, seconds=seconds, seed=23)
            disk = self.probe.window(paced_from, time.time()) if self.probe else None
            sent = loader.result()
        finally:
            loader.stop()
            self.stop(ceiling)
        self.loader_ids += sent.sent_ids
        self.loader_acked += sent.acked
        p50, p99, worst = quantiles(paced.from_schedule)
        print(f"  ceiling: sent {paced.sent}/{paced.planned}; from schedule p50 {p50:.2f} p99"
              f" {p99:.2f} max {worst:.1f} ms; loader {sent.acked:,} runs in {sent.span_s:.1f} s"
              f" ({sent.batches} batches, {sent.failures} failed); max send lag"
              f" {paced.max_send_lag_ms:.1f} ms; client GC {paced.gc_collections} collections,"
              f" longest {paced.gc_longest_ms:.1f} ms", file=sys.stderr)  # fmt: skip
        self.check(paced.sent >= 0.95 * paced.planned, "ceiling: the generator fell behind")
        self.check(not paced.from_schedule.errors, f"ceiling: errors {paced.failures}")
        self.check(sent.failures == 0, f"drain loader: {sent.failures} batches failed")
        return CeilingRun(paced, sent, disk)

    def wait_forwarded(
        self, sidecar: Daemon, target: int | None, bound_s: float
    ) -> tuple[int, float, int]:
        """Poll /health until spool.depth == 0 or ``target`` ops were forwarded (or
        ``bound_s``); (depth, seconds, ops forwarded by this process)."""
        began = time.monotonic()
        depth = forwarded = -1
        while time.monotonic() - began < bound_s:  # bounded
            health = sidecar.health()
            depth = int(health["spool"]["depth"])
            forwarded = int(health["drain"]["operations_forwarded"])
            if depth == 0 or (target is not None and forwarded >= target):
                break
            time.sleep(0.05)
        return depth, time.monotonic() - began, forwarded

    def verify(self, db: Path) -> None:
        """Every acked create on the server, once; no row that was not acked."""
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TEMP TABLE acked (event_id TEXT PRIMARY KEY)")
            conn.executemany("INSERT OR IGNORE INTO acked VALUES (?)", [(e,) for e in self.acked])
            # The ceiling's loader wrote to this server too: its runs are not spoold's.
            conn.execute("CREATE TEMP TABLE loader (event_id TEXT PRIMARY KEY)")
            conn.executemany("INSERT OR IGNORE INTO loader VALUES (?)",
                             [(e,) for e in self.loader_ids])  # fmt: skip
            expected = conn.execute("SELECT COUNT(*) FROM acked").fetchone()[0]
            spoold_rows = "agent_runs WHERE event_id NOT IN (SELECT event_id FROM loader)"
            rows = conn.execute(f"SELECT COUNT(*) FROM {spoold_rows}").fetchone()[0]
            distinct = conn.execute(
                f"SELECT COUNT(DISTINCT event_id) FROM {spoold_rows}"
            ).fetchone()[0]
            loader_rows = conn.execute(
                "SELECT COUNT(*) FROM agent_runs JOIN loader USING (event_id)"
            ).fetchone()[0]
            missing = conn.execute(
                "SELECT COUNT(*) FROM acked a LEFT JOIN agent_runs r USING (event_id)"
                " WHERE r.event_id IS NULL"
            ).fetchone()[0]
        print(f"5. check: {rows:,} rows on the server, {expected:,} acked, {missing} missing,"
              f" {rows - distinct} doubles", file=sys.stderr)  # fmt: skip
        self.verified = missing == 0 and rows == distinct == expected
        self.check(
            loader_rows >= self.loader_acked,
            f"ceiling loader: {loader_rows:,} rows for {self.loader_acked:,} acknowledged",
        )
        self.check(
            self.verified,
            f"server holds {rows:,} rows ({distinct:,} distinct) for {expected:,} acked creates,"
            f" {missing} missing",
        )


# ---- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark spoold draining a backlog (see the module docstring)."
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="ops in the backlog")
    parser.add_argument("--quick", action="store_true", help="--rows 20000: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures there")
    parser.add_argument(
        "--code-root",
        type=Path,
        help="run the daemons from this source tree (e.g. an old worktree, for a side-by-side)",
    )
    parser.add_argument(
        "--spoold-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra SPOOLD_* setting for every spoold started (repeatable; for diagnosis)",
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of both daemons (default: theirs, INFO)",
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=PACED_RATE,
        metavar="N",
        help=f"creates/s offered during the drain (default {PACED_RATE:,.0f}, the target's;"
        " lower it to attribute pauses on a machine others are loading)",
    )
    parser.add_argument(
        "--no-disk-probe",
        action="store_true",
        help="no independent fsync probe beside the rounds (bench/fsync_probe.py; it adds"
        " 50 small fsyncs a second)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (spools, logs)")
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy spoold and the server during the drain into DIR; slows them",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 20_000
    if args.rows < 1000:
        parser.error("--rows must be at least 1000")
    if not 0 < args.paced_rate <= 100_000:
        parser.error("--paced-rate must be in (0, 100000]")
    return args


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="spoold-bench-", dir=args.workdir))
    bench = Bench(args, workdir)
    started = time.monotonic()
    start_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    with sigterm_as_interrupt():
        try:
            with FsyncProbe(workdir, enabled=not args.no_disk_probe) as bench.probe:
                for step in (bench.fill, bench.start_up, bench.server_ingest, bench.drain):
                    step()
        except KeyboardInterrupt:
            print("interrupted; daemons stopped", file=sys.stderr)
            return 130
        except Exception as exc:
            bench.problems.append(f"run failed: {exc!r}")
        finally:
            bench.daemons.stop_all()
            for log in sorted(workdir.glob("*.log")):
                text = log.read_text(errors="replace")
                if "Traceback" in text or '"level":"critical"' in text:
                    bench.problems.append(f"{log.name} has errors:\n{tail(log)}")
            if args.keep:
                print(f"kept {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    verified = bench.verified and not bench.problems
    if args.json is not None:
        write_json(args.json, bench.figures, verified=verified)
    print()
    print(
        f"spoold drain benchmark, {args.rows:,}-op backlog, {os.cpu_count()} CPUs, sqlite"
        f" {sqlite3.sqlite_version}, load generator {event_loop_name()} in this process,"
        f" daemons from {args.code_root or ROOT}"
    )
    if args.spoold_env:
        print(f"extra spoold settings (diagnosis): {' '.join(args.spoold_env)}")
    for figure in bench.figures:
        print(format_row(figure))
    end_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at start {start_load}, at end {end_load} (1/5/15 min)")
    print(f"total time {time.monotonic() - started:.0f} s; verified: {verified}")
    for problem in bench.problems:
        print(f"PROBLEM: {problem}")
    if bench.problems:
        return 2
    return 0 if all(f.met is not False for f in bench.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
