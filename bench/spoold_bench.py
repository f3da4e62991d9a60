"""Benchmark of spoold, the sidecar: real ``spoold`` and ``telemetry-server`` processes.

    python bench/spoold_bench.py            # full run (100,000 and 1,000,000-op backlogs)
    python bench/spoold_bench.py --quick    # smoke run, small counts, < 60 s
    python bench/spoold_bench.py --profile /tmp/prof   # py-spy of spoold per scenario

Every daemon is started here on a free 127.0.0.1 port with its files in one
temp dir, and stopped by its PID at the end (SIGTERM, SIGKILL after a grace),
also when a scenario fails or the bench is interrupted. One table at the end:

1. **Accept, durable acks.** ``POST /api/v1/runs`` (realistic runs, ~800 bytes
   spooled per op) at concurrency 32 against spoold with its default config
   (group commit), and in the same run against a spoold with
   ``SPOOLD_MAX_GROUP=1`` (one spool commit + fsync per request). Their ratio is
   what group commit buys. The upstream is DOWN here (``SPOOLD_UPSTREAM_URL``
   points at a closed port), so the drainer does not compete for the 2 cores.
2. **Latency at a fixed offered load**: an open-loop, paced generator sends a
   create every 1/1000 s (bounded count and time) whatever the answers do;
   latency is measured from each request's *scheduled* time, so a stall is
   not hidden by the generator waiting for it (no coordinated omission).
   2a: upstream down (accept path alone); 2b: after scenario 4, with the
   drainer forwarding each group to a live server on the same machine; 2c:
   during the last part of scenario 5's drain.
3. **create + PATCH lifecycle** at concurrency 32 through spoold (upstream
   down: a PATCH of a run spoold accepted is answered locally).
4. **Drain of a 100,000-op backlog.** The spool left by 1-3 (still on the
   spoold of scenario 1, upstream down) is topped up to ``--backlog``
   operations through spoold's public ``POST /api/v1/runs/batch`` (fresh
   realistic runs, ``SPOOLD_BATCH_MAX_ITEMS`` per batch, 3 senders): exactly
   what spoold writes in production, whatever its internals; the fill rate is
   a row of its own. Then that spoold is stopped, a server is started on a
   fresh database and a spoold on that spool; the drain is timed from spoold's
   first ``/health`` 200 to ``spool.depth == 0``. The server's own batch
   ingest (``POST /api/v1/runs/batch``, 100 runs per batch, concurrency 4, as
   bench/server_bench.py) is measured in the same run on another fresh
   database, and the drain quoted as a % of it; next to it, as a diagnostic,
   the same server's upsert endpoint fed the way the drainer feeds it
   (``mode=upsert``, ``--drain-batch`` items built by ``coalesce``, one batch
   in flight). Afterwards the server is
   stopped and its SQLite file checked: every acknowledged create is there,
   every acknowledged PATCH in its final state, no run twice, none extra.
5. **RSS with a 1,000,000-op backlog** (``/proc/PID/status`` VmRSS sampled every
   0.2 s, and VmHWM, the kernel's peak). The backlog is filled the same way
   as 4's top-up, through a spoold whose upstream is down (fill rate, RSS and
   VmHWM under that sustained accept in their own row); that spoold is
   stopped, and then: (a) spoold started on the backlog, upstream down - time
   to the first ``/health`` 200 and first create 201, RSS idle and under an
   accept burst; (b) ``kill -9`` and restart - the same; (c) restart pointed at
   a live server - RSS during the drain, which stops after
   ``--big-drain-seconds`` if not done (rate and count printed). Afterwards
   server rows + ops left in the spool (``spoold spool stats``, the operator
   command, spoold stopped) must cover every op, with none extra.

The bench reads spoold only through its HTTP API, ``/proc`` and its operator
command; it never imports spoold's spool or runs index to write state.

Settings the bench gives spoold beyond its defaults: ``SPOOLD_SHUTDOWN_DEADLINE_S=2``
(a stop with the upstream down takes 2 s instead of 10), in scenario 1
``SPOOLD_MAX_GROUP=1`` for the comparison, and in scenario 5
``SPOOLD_MAX_SPOOL_MB=2048``: 1,000,000 ops take ~0.8 GiB of spool, which with
the accept burst would sit at the default 1 GiB cap's 80% "degraded" mark,
so the cap is raised to keep it out of the figures. Log levels are the daemons'
defaults (INFO: one JSON line per request) unless ``--log-level`` says otherwise.
The load generator is bench/loadgen.py (uvloop when installed) in this
process; the machine's cores are shared with it, so CPU columns show spoold's
and the client's share (% of one core).

Exit status: 0 if every target passed and every check held, 1 if a target
was missed, 2 if a check failed or a scenario broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import Client, LabelStats, LoadResult, event_loop_name, run_load
from server_bench import Batch, Create, Lifecycle, Profiler, free_port, run_payload, tail

from server.contract.models import RunCreate
from server.contract.timestamps import utc_now
from spoold.config import SpooldConfig
from spoold.operations import coalesce, create_op

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

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait for the first /health 200; returns the seconds that took."""
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
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
        self, workdir: Path, log_level: str | None, extra_env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.log_level = log_level
        self.extra_env = extra_env or {}
        self.started: list[Daemon] = []

    def _python(self, module: str) -> list[str]:
        return [sys.executable, "-m", module]

    def server(self, name: str, db: Path) -> Daemon:
        env = clean_env({"TELEMETRY_LOG_LEVEL": self.log_level} if self.log_level else {})
        argv = [*self._python("server"), "--host", HOST, "--port", str(free_port())]
        daemon = Daemon(name, [*argv, "--db", str(db)], env, self.workdir / f"{name}.log")
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
        daemon = Daemon(name, argv, clean_env(settings), self.workdir / f"{name}.log")
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


def spool_depth_offline(spool_dir: Path) -> int:
    """Ops left in a stopped spoold's spool, from its operator command ``spoold spool stats``."""
    argv = [sys.executable, "-m", "spoold", "spool", "--spool-dir", str(spool_dir), "stats"]
    done = subprocess.run(
        argv, cwd=ROOT, env=clean_env({}), capture_output=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"spoold spool stats exited with {done.returncode}: {done.stderr!r}")
    return int(orjson.loads(done.stdout)["depth"])


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

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.span_s if self.span_s > 0 else math.nan

    @property
    def failures(self) -> str:
        return f"{self.from_schedule.non_2xx}/{sum(self.from_schedule.errors.values())}"


async def _paced(
    base_url: str, rate: float, count: int, max_seconds: float, seed: int, timeout_s: float
) -> PacedResult:
    rng = random.Random(seed)
    bodies = [run_payload(rng, start=datetime.now(UTC)) for _ in range(count)]
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
    """Send ``rate`` creates per second for ``seconds`` (open loop), bounded in count and time."""
    coro = _paced(base_url, rate, int(rate * seconds), seconds + 5, seed, timeout_s)
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


@dataclass
class UpsertBatch:
    """``POST /api/v1/runs/batch?mode=upsert`` of pre-built items, as spoold's drainer sends."""

    batches: Sequence[Sequence[dict[str, Any]]]

    async def __call__(self, client: Client, seq: int) -> None:
        items = self.batches[seq % len(self.batches)]
        status, answer = await client.request(
            "POST", "/api/v1/runs/batch", json=items, params={"mode": "upsert"}, label="upsert"
        )
        if status == 200 and isinstance(answer, dict) and not answer.get("errors"):
            client.recording.note("upserted", len(items))


def upsert_items(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Upsert items built exactly as the drainer builds them from spooled create ops."""
    accepted_at = utc_now()
    now = datetime.now(UTC)
    ops = [
        create_op(RunCreate.model_validate(run_payload(rng, start=now)), accepted_at)
        for _ in range(count)
    ]
    return [snapshot.upsert_item() for snapshot in coalesce(ops)]


class PacedTail:
    """Scenario 2c: a paced load in a thread, started once while a drain runs."""

    def __init__(self, daemon: Daemon, seconds: float) -> None:
        self.daemon = daemon
        self.seconds = seconds
        self.result: PacedResult | None = None
        self.cpu = math.nan
        self.error: str | None = "never started"
        self.began_at = (0, 0.0)  # (ops the drain had forwarded, seconds into it)
        self._thread: threading.Thread | None = None

    def start(self, forwarded: int, elapsed: float) -> None:
        if self._thread is not None:
            return
        self.began_at = (forwarded, elapsed)
        self.error = None
        self._thread = threading.Thread(target=self._run, name="paced-2c", daemon=True)
        self._thread.start()
        print(f"2c: 1,000 ops/s offered {elapsed:.0f} s into the drain", file=sys.stderr)

    def _run(self) -> None:
        try:
            cpu_before = self.daemon.cpu_seconds()
            result = paced_load(self.daemon.base_url, rate=1000, seconds=self.seconds, seed=23)
            self.cpu = 100 * (self.daemon.cpu_seconds() - cpu_before) / max(result.span_s, 1e-9)
            self.result = result
        except Exception as exc:  # reported as a broken scenario
            self.error = repr(exc)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(self.seconds + 60)


# ---- the table ------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    result: str
    p50: float = math.nan
    p99: float = math.nan
    failures: str = ""
    spoold_cpu: float = math.nan
    client_cpu: float = math.nan
    target: str = ""
    verdict: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    def add(self, row: Row, passed: bool | None = None) -> None:
        if passed is not None:
            row.verdict = "PASS" if passed else "MISS"
            if not passed:
                self.missed.append(f"{row.scenario}: {row.result} (target {row.target})")
        self.rows.append(row)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.broken.append(what)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", file=sys.stderr)

    def print_table(self) -> None:
        headers = ("scenario", "result", "p50 ms", "p99 ms", "non2xx/err")
        headers += ("spoold CPU", "client CPU", "target", "")

        def num(value: float, fmt: str = "{:.2f}") -> str:
            return "" if math.isnan(value) else fmt.format(value)

        cells = [
            (
                row.scenario,
                row.result,
                num(row.p50),
                num(row.p99),
                row.failures,
                num(row.spoold_cpu, "{:.0f}%"),
                num(row.client_cpu, "{:.0f}%"),
                row.target,
                row.verdict,
            )
            for row in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        right = {2, 3, 4, 5, 6}

        def line(values: Sequence[str]) -> str:
            return " | ".join(
                v.rjust(widths[i]) if i in right else v.ljust(widths[i])
                for i, v in enumerate(values)
            ).rstrip()

        print(line(headers))
        print("-+-".join("-" * w for w in widths))
        # Rows are added as phases finish (2b runs after 4): print them by scenario number.
        cells = [
            c for _, c in sorted(enumerate(cells), key=lambda ic: (ic[1][0].split(" ")[0], ic[0]))
        ]
        for row_cells in cells:
            print(line(row_cells))


def failures_of(result: LoadResult, label: str | None = None) -> str:
    stats = result.stats(label)
    return f"{stats.non_2xx}/{sum(stats.errors.values())}"


def quantiles(stats: LabelStats) -> tuple[float, float]:
    p50, p99, _ = stats.quantiles_ms()
    return p50, p99


# ---- scenarios ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    accept_s: float
    accept_max: int
    warmup: int
    paced_s: float
    lifecycle_s: float
    lifecycle_max: int
    backlog: int
    fill_s: float  # bound of scenario 4's top-up
    ingest_batches: int
    big_backlog: int
    big_fill_s: float  # bound of scenario 5's fill
    burst_s: float
    big_drain_s: float


FULL = Sizes(
    accept_s=15,
    accept_max=45_000,
    warmup=500,
    paced_s=15,
    lifecycle_s=15,
    lifecycle_max=12_000,
    backlog=100_000,
    fill_s=120,
    ingest_batches=1_000,
    big_backlog=1_000_000,
    big_fill_s=300,
    burst_s=3,
    big_drain_s=180,
)
QUICK = Sizes(
    accept_s=3,
    accept_max=15_000,
    warmup=200,
    paced_s=3,
    lifecycle_s=3,
    lifecycle_max=3_000,
    backlog=30_000,
    fill_s=30,
    ingest_batches=80,
    big_backlog=30_000,
    big_fill_s=30,
    burst_s=1.5,
    big_drain_s=10,
)
#: Concurrent ``POST /api/v1/runs/batch`` senders that fill the backlogs.
FILL_SENDERS = 3
#: Scenario 5's spoolds: 1,000,000 ops (~0.8 GiB) plus the burst would reach the default
#: 1 GiB cap's 80% "degraded" mark; a higher cap keeps the cap out of the figures.
BIG_ENV = {"SPOOLD_MAX_SPOOL_MB": "2048"}


@dataclass
class Acked:
    """What spoold acknowledged over HTTP, to look for on the server afterwards."""

    created: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)

    def take(self, result: LoadResult) -> None:
        self.created += result.recording.notes.get("acked", [])
        self.patched += result.recording.notes.get("patched", [])


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.sizes = sized(args)
        self.workdir = workdir
        extra = dict(item.split("=", 1) for item in args.spoold_env)
        self.daemons = Daemons(workdir, args.log_level, extra)
        self.report = Report()
        # Nothing listens here: an upstream that is down (connection refused at once).
        self.dead_upstream = f"http://{HOST}:{free_port()}"
        self.group_spool = workdir / "spool-group"
        self.acked = Acked()
        self.mean_group = math.nan
        self.ingest_rate = math.nan
        self._group_daemon: Daemon | None = None

    @property
    def group_daemon(self) -> Daemon:
        """The default-config spoold of scenario 1, kept running for 2a and 3."""
        assert self._group_daemon is not None, "scenario 1 did not run"
        return self._group_daemon

    # -- helpers --

    def load(
        self,
        daemon: Daemon,
        op: Any,
        *,
        name: str,
        concurrency: int,
        max_ops: int,
        max_seconds: float,
        record: bool = True,
    ) -> tuple[LoadResult, float]:
        """Warm up, then one measured closed-loop run; (result, daemon CPU % of a core).

        ``record``: the warm-up's acknowledged writes are looked for on the server later.
        """
        warm = run_load(
            daemon.base_url,
            op,
            name="warmup",
            concurrency=concurrency,
            max_ops=self.sizes.warmup,
            max_seconds=20,
        )
        if record:
            self.acked.take(warm)
        profiler = Profiler.start(self.args.profile, daemon.pid, name)
        cpu_before = daemon.cpu_seconds()
        try:
            result = run_load(
                daemon.base_url,
                op,
                name=name,
                concurrency=concurrency,
                max_ops=max_ops,
                max_seconds=max_seconds,
            )
        finally:
            if profiler is not None:
                profiler.stop()
        cpu = 100 * (daemon.cpu_seconds() - cpu_before) / result.elapsed_s
        print(result.format(), file=sys.stderr)
        return result, cpu

    def spoold_stop(self, daemon: Daemon) -> None:
        code = daemon.stop()
        self.report.check(code == 0, f"{daemon.name} exited with {code} on SIGTERM")

    # -- 1: accept rate, group commit vs per-request commit --

    def accept(self) -> None:
        print("1. accept at c=32, upstream down", file=sys.stderr)
        sizes = self.sizes
        results: dict[str, tuple[LoadResult, float, float]] = {}
        for key, spool_dir, extra in (
            ("single", self.workdir / "spool-single", {"SPOOLD_MAX_GROUP": "1"}),
            ("group", self.group_spool, {}),
        ):
            daemon = self.daemons.spoold(f"spoold-{key}", spool_dir, self.dead_upstream, extra)
            daemon.start()
            before = daemon.health()["spool"]
            result, cpu = self.load(
                daemon,
                Create(random.Random(f"accept-{key}")),
                name=f"creates c=32 ({key})",
                concurrency=32,
                max_ops=sizes.accept_max,
                max_seconds=sizes.accept_s,
                record=key == "group",
            )
            after = daemon.health()["spool"]
            groups = after["groups"] - before["groups"]
            mean_group = (after["depth"] - before["depth"]) / groups if groups else math.nan
            results[key] = (result, cpu, mean_group)
            if key == "group":
                self.acked.take(result)
                self.mean_group = mean_group
                self._group_daemon = daemon  # kept running for scenarios 2a and 3
            else:
                self.spoold_stop(daemon)
        single, single_cpu, single_group = results["single"]
        group, group_cpu, group_mean = results["group"]
        ratio = group.ops_per_s / single.ops_per_s
        p50, p99 = quantiles(single.stats("create"))
        self.report.add(
            Row(
                "1. creates c=32, SPOOLD_MAX_GROUP=1 (per-request commit)",
                f"{single.ops_per_s:,.0f} ops/s ({single_group:.1f} ops/commit)",
                p50,
                p99,
                failures_of(single),
                single_cpu,
                single.client_cpu_pct,
            )
        )
        p50, p99 = quantiles(group.stats("create"))
        self.report.add(
            Row(
                "1. creates c=32, default (group commit)",
                f"{group.ops_per_s:,.0f} ops/s ({group_mean:.1f} ops/commit)",
                p50,
                p99,
                failures_of(group),
                group_cpu,
                group.client_cpu_pct,
                ">= 3,000 ops/s",
            ),
            passed=group.ops_per_s >= 3000,
        )
        self.report.add(
            Row(
                "1. group / per-request commit",
                f"{ratio:.2f}x",
                target=">= 3x",
            ),
            passed=ratio >= 3,
        )
        for key, (result, _, _) in results.items():
            stats = result.stats()
            self.report.check(
                not stats.non_2xx and not stats.errors,
                f"accept ({key}): non-2xx {stats.non_2xx}, errors {dict(stats.errors)}",
            )

    # -- 2: fixed offered load --

    def paced(self, daemon: Daemon, scenario: str, seed: int) -> None:
        print(f"{scenario}: 1,000 ops/s offered, open loop", file=sys.stderr)
        cpu_before = daemon.cpu_seconds()
        result = paced_load(daemon.base_url, rate=1000, seconds=self.sizes.paced_s, seed=seed)
        cpu = 100 * (daemon.cpu_seconds() - cpu_before) / max(result.span_s, 1e-9)
        self.acked.created += result.acked
        self.paced_row(scenario, result, cpu)

    def paced_row(self, scenario: str, result: PacedResult, cpu: float) -> None:
        p50, p99 = quantiles(result.from_schedule)
        s50, s99 = quantiles(result.service)
        print(
            f"  sent {result.sent}/{result.planned} at {result.achieved_rate:,.0f}/s; from"
            f" schedule p50 {p50:.2f} p99 {p99:.2f} ms; from send p50 {s50:.2f} p99 {s99:.2f}"
            f" ms; max send lag {result.max_send_lag_ms:.1f} ms",
            file=sys.stderr,
        )
        on_time = result.sent >= 0.95 * result.planned and result.achieved_rate >= 950
        self.report.add(
            Row(
                scenario,
                f"{result.achieved_rate:,.0f} ops/s offered, {result.sent:,} sent"
                f" (p99 from send {s99:.1f} ms)",
                p50,
                p99,
                result.failures,
                cpu,
                100 * result.client_cpu_s / max(result.span_s, 1e-9),
                "p99 <= 50 ms",
            ),
            passed=p99 <= 50 and on_time,
        )
        if not on_time:
            self.report.note(f"{scenario}: the generator fell behind its schedule")
        self.report.check(
            result.from_schedule.non_2xx == 0 and not result.from_schedule.errors,
            f"{scenario}: non-2xx/errors {result.failures}",
        )

    def paced_down(self) -> None:
        self.paced(self.group_daemon, "2a. 1,000 creates/s offered, upstream down", 21)

    # -- 3: lifecycle --

    def lifecycle(self) -> None:
        print("3. create + PATCH lifecycle at c=32, upstream down", file=sys.stderr)
        daemon = self.group_daemon
        result, cpu = self.load(
            daemon,
            Lifecycle(random.Random("lifecycle")),
            name="lifecycle c=32",
            concurrency=32,
            max_ops=self.sizes.lifecycle_max,
            max_seconds=self.sizes.lifecycle_s,
        )
        self.acked.take(result)
        create = quantiles(result.stats("create"))
        patch = quantiles(result.stats("patch"))
        both = quantiles(result.stats())
        self.report.add(
            Row(
                "3. create+PATCH lifecycle c=32 (upstream down)",
                f"{result.ops_per_s:,.0f} lifecycles/s = {result.requests_per_s():,.0f} req/s"
                f" (p50/p99 create {create[0]:.1f}/{create[1]:.1f},"
                f" PATCH {patch[0]:.1f}/{patch[1]:.1f} ms)",
                both[0],
                both[1],
                failures_of(result),
                cpu,
                result.client_cpu_pct,
            )
        )
        stats = result.stats()
        self.report.check(
            not stats.non_2xx and not stats.errors,
            f"lifecycle: non-2xx {stats.non_2xx}, errors {dict(stats.errors)}",
        )

    # -- 4: drain of a 100k backlog vs the server's batch ingest --

    def server_ingest(self) -> None:
        print("4. server batch ingest (100 runs/batch)", file=sys.stderr)
        server = self.daemons.server("server-ingest", self.workdir / "ingest.sqlite")
        server.start()
        rng = random.Random("ingest")
        now = datetime.now(UTC)
        batches = [
            [run_payload(rng, start=now) for _ in range(100)]
            for _ in range(self.sizes.ingest_batches)
        ]
        warm = [[run_payload(rng, start=now) for _ in range(100)] for _ in range(5)]
        run_load(server.base_url, Batch(warm), name="warmup", concurrency=2, max_ops=5)
        cpu_before = server.cpu_seconds()
        result = run_load(
            server.base_url,
            Batch(batches),
            name="server batch ingest",
            concurrency=self.args.ingest_concurrency,
            max_ops=len(batches),
            max_seconds=120,
        )
        cpu = 100 * (server.cpu_seconds() - cpu_before) / result.elapsed_s
        print(result.format(), file=sys.stderr)
        inserted = len(result.recording.notes.get("acked", []))
        self.ingest_rate = inserted / result.elapsed_s
        p50, p99 = quantiles(result.stats("batch"))
        self.report.add(
            Row(
                f"4. server batch ingest, 100 runs/batch, c={self.args.ingest_concurrency}",
                f"{self.ingest_rate:,.0f} runs/s ({inserted:,} runs; server CPU {cpu:.0f}%)",
                p50,
                p99,
                failures_of(result),
                math.nan,
                result.client_cpu_pct,
                "(baseline)",
            )
        )
        self.report.check(
            inserted == 100 * len(batches), f"server ingest: {inserted} of {100 * len(batches)}"
        )
        # Diagnostic: what one sender gets from the upsert endpoint with the drainer's batch
        # size and only one batch in flight at a time (the drainer's way of sending).
        # With two in flight: what a drainer that overlapped its batches could get.
        size = self.args.drain_batch
        for concurrency in (1, 2):
            count = max(4, self.sizes.backlog // size // 4)
            upserts = [upsert_items(rng, size) for _ in range(count)]
            cpu_before = server.cpu_seconds()
            result = run_load(
                server.base_url,
                UpsertBatch(upserts),
                name=f"upsert {size}/batch c={concurrency}",
                concurrency=concurrency,
                max_ops=len(upserts),
                max_seconds=60,
            )
            cpu = 100 * (server.cpu_seconds() - cpu_before) / result.elapsed_s
            print(result.format(), file=sys.stderr)
            upserted = sum(result.recording.notes.get("upserted", []))
            rate = upserted / result.elapsed_s
            p50, p99 = quantiles(result.stats("upsert"))
            in_flight = "one batch in flight" if concurrency == 1 else "two in flight"
            self.report.add(
                Row(
                    f"4. (diagnostic) server upsert, {size} items/batch, c={concurrency}"
                    f" ({in_flight})",
                    f"{rate:,.0f} runs/s = {100 * rate / self.ingest_rate:.0f}% of ingest"
                    f" ({upserted:,} runs; server CPU {cpu:.0f}%)",
                    p50,
                    p99,
                    failures_of(result),
                    client_cpu=result.client_cpu_pct,
                )
            )
        server.stop()

    def drain(self) -> None:
        sizes = self.sizes
        daemon = self.group_daemon
        http_ops = int(daemon.health()["spool"]["depth"])
        top_up = max(0, sizes.backlog - http_ops)
        print(
            f"4. drain: {http_ops:,} ops accepted in 1-3, topping up {top_up:,} over"
            f" POST /api/v1/runs/batch ({FILL_SENDERS} senders, upstream down)",
            file=sys.stderr,
        )
        fill = fill_over_http(
            daemon, top_up, senders=FILL_SENDERS, max_seconds=sizes.fill_s, keep_ids=True
        )
        self.acked.created += fill.acked
        backlog = int(daemon.health()["spool"]["depth"])
        self.spoold_stop(daemon)
        self.report.add(
            Row(
                "4. backlog fill over HTTP (batch endpoint, upstream down)",
                fill.describe(),
                failures=fill.failures,
                spoold_cpu=fill.spoold_cpu,
                client_cpu=fill.client_cpu,
            )
        )
        self.report.check(
            fill.ops == top_up, f"4. fill: {fill.ops:,} of {top_up:,} creates acknowledged"
        )
        self.report.note(
            f"4. backlog: {http_ops:,} ops accepted in 1-3 + {fill.ops:,} filled over HTTP ="
            f" {backlog:,} ops in the spool"
        )
        self.server_ingest()
        db = self.workdir / "drain.sqlite"
        server = self.daemons.server("server-drain", db)
        server.start()
        sidecar = self.daemons.spoold("spoold-drain", self.group_spool, server.base_url)
        spoold_profile = server_profile = None
        with RssSampler(sidecar) as rss:
            ready_s = sidecar.start()
            spoold_profile = Profiler.start(self.args.profile, sidecar.pid, "drain spoold")
            server_profile = Profiler.start(self.args.profile, server.pid, "drain server")
            cpu0 = (sidecar.cpu_seconds(), server.cpu_seconds())
            depth, drain_s, _ = self.wait_drained(sidecar, bound_s=600)
            cpu1 = (sidecar.cpu_seconds(), server.cpu_seconds())
        for profiler in (spoold_profile, server_profile):
            if profiler is not None:
                profiler.stop()
        drained = backlog - depth
        rate = drained / drain_s if drain_s > 0 else math.nan
        share = 100 * rate / self.ingest_rate
        spoold_cpu = 100 * (cpu1[0] - cpu0[0]) / drain_s
        server_cpu = 100 * (cpu1[1] - cpu0[1]) / drain_s
        health = sidecar.health()
        batches = max(1, int(health["drain"]["batches"]))
        per_batch = int(health["drain"]["operations_forwarded"]) / batches
        self.report.add(
            Row(
                f"4. drain of a {backlog:,}-op backlog ({per_batch:.0f} ops/batch)",
                f"{rate:,.0f} ops/s in {drain_s:.1f} s = {share:.0f}% of batch ingest,"
                f" {depth} left (server CPU {server_cpu:.0f}%; spoold ready in"
                f" {ready_s:.2f} s, max RSS {rss.max_mb:.0f} MB)",
                spoold_cpu=spoold_cpu,
                target=">= 80% of ingest",
            ),
            passed=share >= 80 and depth == 0,
        )
        counters = health["counters"]
        self.report.check(
            counters["accepted"]
            == counters["forwarded"] + counters["queued"] + counters["dead_lettered"],
            f"4. accounting does not add up: {counters}",
        )
        self.report.check(counters["dead_lettered"] == 0, f"4. dead letters: {counters}")
        # 2b: the same fixed load while the drainer forwards each group to a live server.
        self.paced(sidecar, "2b. 1,000 creates/s offered, upstream up (drainer live)", 22)
        depth, _, _ = self.wait_drained(sidecar, bound_s=120)
        self.report.check(depth == 0, f"2b: {depth} ops not drained")
        self.spoold_stop(sidecar)
        server.stop()
        self.verify_drain(db)

    def wait_drained(
        self,
        sidecar: Daemon,
        bound_s: float,
        *,
        target: int | None = None,
        on_poll: Callable[[int, float], None] | None = None,
    ) -> tuple[int, float, int]:
        """Poll /health until spool.depth == 0, or until this spoold has forwarded
        ``target`` ops (FIFO: the backlog it started with, whatever arrived since),
        or ``bound_s``; returns (depth, seconds, ops forwarded by this process)."""
        began = time.monotonic()
        depth = forwarded = -1
        while time.monotonic() - began < bound_s:  # bounded
            health = sidecar.health()
            depth = int(health["spool"]["depth"])
            forwarded = int(health["drain"]["operations_forwarded"])
            if depth == 0 or (target is not None and forwarded >= target):
                break
            if on_poll is not None:
                on_poll(forwarded, time.monotonic() - began)
            time.sleep(SAMPLE_EVERY_S)
        return depth, time.monotonic() - began, forwarded

    def verify_drain(self, db: Path) -> None:
        """Every acked create on the server, PATCHed runs final, no extra or double rows."""
        created = set(self.acked.created)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TEMP TABLE acked (event_id TEXT PRIMARY KEY, patched INT)")
            conn.executemany("INSERT OR REPLACE INTO acked VALUES (?, 0)", [(e,) for e in created])
            conn.executemany(
                "UPDATE acked SET patched = 1 WHERE event_id = ?",
                [(e,) for e in self.acked.patched],
            )
            rows = conn.execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0]
            distinct = conn.execute("SELECT COUNT(DISTINCT event_id) FROM agent_runs").fetchone()[0]
            missing = conn.execute(
                "SELECT COUNT(*) FROM acked a LEFT JOIN agent_runs r USING (event_id)"
                " WHERE r.event_id IS NULL"
            ).fetchone()[0]
            not_final = conn.execute(
                "SELECT COUNT(*) FROM acked a JOIN agent_runs r USING (event_id)"
                " WHERE a.patched = 1 AND r.status != 'success'"
            ).fetchone()[0]
        expected = len(created)
        ok = missing == 0 and not_final == 0 and rows == distinct == expected
        self.report.add(
            Row(
                "4. check: server rows after the drain (+2b)",
                f"{rows:,} rows, expected {expected:,}: {missing} acked creates missing,"
                f" {not_final} of {len(self.acked.patched):,} PATCHed runs not final,"
                f" {rows - distinct} doubles",
                target="all there, once",
            ),
            passed=ok,
        )
        self.report.check(ok, "4. the server does not hold exactly what spoold acknowledged")

    # -- 5: RSS with a 1,000,000-op backlog --

    def big_backlog(self) -> None:
        sizes = self.sizes
        spool_dir = self.workdir / "spool-big"
        print(f"5. filling {sizes.big_backlog:,} ops over POST /api/v1/runs/batch", file=sys.stderr)
        filler = self.daemons.spoold("spoold-big-fill", spool_dir, self.dead_upstream, BIG_ENV)
        filler.start()
        with RssSampler(filler) as rss:
            fill = fill_over_http(
                filler,
                sizes.big_backlog,
                senders=FILL_SENDERS,
                max_seconds=sizes.big_fill_s,
                keep_ids=False,
            )
        fill_hwm = filler.status_kb("VmHWM") / 1024
        self.spoold_stop(filler)
        self.report.add(
            Row(
                f"5. {sizes.big_backlog:,}-op backlog fill over HTTP (upstream down)",
                fill.describe() + f"; RSS max {rss.max_mb:.0f} MB, VmHWM {fill_hwm:.0f} MB",
                failures=fill.failures,
                spoold_cpu=fill.spoold_cpu,
                client_cpu=fill.client_cpu,
            )
        )
        self.report.check(
            fill.ops == sizes.big_backlog,
            f"5. fill: {fill.ops:,} of {sizes.big_backlog:,} creates acknowledged",
        )
        http_acked: list[str] = []
        rss_max: dict[str, float] = {}
        hwm: dict[str, float] = {}

        def probe_create(daemon: Daemon, started: float) -> float:
            """Seconds from ``started`` to the first 201 of a create (bounded: 10 s)."""
            body = run_payload(random.Random(), start=datetime.now(UTC))
            while time.monotonic() - started < 10:
                with contextlib.suppress(OSError):
                    if post_json(daemon.base_url + "/api/v1/runs", body) == 201:
                        http_acked.append(body["event_id"])
                        return time.monotonic() - started
                time.sleep(0.01)
            return math.nan

        # (a) first start on the backlog, upstream down; idle, then an accept burst
        sidecar = self.daemons.spoold("spoold-big-a", spool_dir, self.dead_upstream, BIG_ENV)
        with RssSampler(sidecar) as rss:
            started = time.monotonic()
            ready_a = sidecar.start()
            first_a = probe_create(sidecar, started)
            time.sleep(2)
            burst = run_load(
                sidecar.base_url,
                Create(random.Random("burst")),
                name="burst",
                concurrency=32,
                max_ops=50_000,
                max_seconds=sizes.burst_s,
            )
            http_acked += burst.recording.notes.get("acked", [])
            time.sleep(1)
        rss_max["queued"], hwm["queued"] = rss.max_mb, sidecar.status_kb("VmHWM") / 1024
        depth_a = sidecar.health()["spool"]["depth"]
        # (b) kill -9 with the backlog queued, restart, upstream still down
        sidecar.kill9()
        sidecar = self.daemons.spoold("spoold-big-b", spool_dir, self.dead_upstream, BIG_ENV)
        with RssSampler(sidecar) as rss:
            started = time.monotonic()
            ready_b = sidecar.start()
            first_b = probe_create(sidecar, started)
            time.sleep(3)
        rss_max["restart"], hwm["restart"] = rss.max_mb, sidecar.status_kb("VmHWM") / 1024
        depth_b = sidecar.health()["spool"]["depth"]
        self.spoold_stop(sidecar)
        # (c) restart pointed at a live server: RSS during the drain; near its end, scenario
        # 2c offers 1,000 creates/s while the drainer finishes (and the spool is vacuumed).
        db = self.workdir / "big.sqlite"
        server = self.daemons.server("server-big", db)
        server.start()
        sidecar = self.daemons.spoold("spoold-big-c", spool_dir, server.base_url, BIG_ENV)
        tail = PacedTail(sidecar, sizes.paced_s)
        with RssSampler(sidecar) as rss:
            ready_c = sidecar.start()
            depth_c0 = int(sidecar.health()["spool"]["depth"])
            cpu0 = (sidecar.cpu_seconds(), server.cpu_seconds())

            def near_the_end(forwarded: int, elapsed: float) -> None:
                rate = forwarded / elapsed if elapsed > 0 else 0.0
                left_s = (depth_c0 - forwarded) / rate if rate > 0 else math.inf
                late = elapsed >= sizes.big_drain_s - sizes.paced_s - 2
                if elapsed >= 1 and (left_s <= 0.7 * sizes.paced_s or late):
                    tail.start(forwarded, elapsed)

            _, drain_s, drained = self.wait_drained(
                sidecar, bound_s=sizes.big_drain_s, target=depth_c0, on_poll=near_the_end
            )
            cpu1 = (sidecar.cpu_seconds(), server.cpu_seconds())
            tail.start(drained, drain_s)  # no-op if already started
            tail.join()
            self.wait_drained(sidecar, bound_s=60)  # 2c's own ops, for the check below
        rss_max["drain"], hwm["drain"] = rss.max_mb, sidecar.status_kb("VmHWM") / 1024
        self.spoold_stop(sidecar)
        server.stop()
        if tail.result is not None:
            http_acked += tail.result.acked
            when = "ended" if tail.began_at[0] >= depth_c0 else "had"
            self.paced_row(
                f"2c. 1,000 creates/s offered, the last {max(0, depth_c0 - tail.began_at[0]):,}"
                f" ops of the {depth_c0:,}-op drain forwarding",
                tail.result,
                tail.cpu,
            )
            self.report.note(
                f"2c started {tail.began_at[1]:.0f} s into the 5c drain, when it {when}"
                f" forwarded {tail.began_at[0]:,} of {depth_c0:,} ops"
            )
        else:
            self.report.broken.append(f"2c did not run: {tail.error}")
        worst = max(rss_max.values())
        worst_hwm = max(hwm.values())
        self.report.add(
            Row(
                f"5. spoold RSS, {sizes.big_backlog:,}-op backlog: queued+burst /"
                " after kill -9 / drain",
                " / ".join(f"{rss_max[k]:.0f}" for k in ("queued", "restart", "drain"))
                + f" MB (VmHWM {' / '.join(f'{hwm[k]:.0f}' for k in hwm)} MB)",
                target="<= 150 MB",
            ),
            passed=max(worst, worst_hwm) <= 150,
        )
        self.report.add(
            Row(
                "5. start on the backlog: /health 200, first create 201",
                f"first start {ready_a:.2f} s, {first_a:.2f} s; after kill -9"
                f" {ready_b:.2f} s, {first_b:.2f} s; drain restart {ready_c:.2f} s",
                target="accepting within 2 s",
            ),
            passed=all(s <= 2.0 for s in (ready_a, first_a, ready_b, first_b, ready_c)),
        )
        finished = "all" if drained >= depth_c0 else f"stopped after {drain_s:.0f} s (bound)"
        clean_ops, clean_s = tail.began_at if tail.began_at[1] > 0 else (drained, drain_s)
        self.report.add(
            Row(
                f"5. drain from the {depth_c0:,}-op backlog ({fill.ops / max(1, fill.groups):.0f}"
                " ops/group)",
                f"{clean_ops / clean_s:,.0f} ops/s before 2c ({clean_ops:,} ops in"
                f" {clean_s:.0f} s); {drained:,} ops in {drain_s:.1f} s in all, {finished}"
                f" (server CPU {100 * (cpu1[1] - cpu0[1]) / drain_s:.0f}%)",
                spoold_cpu=100 * (cpu1[0] - cpu0[0]) / drain_s,
            )
        )
        self.report.note(
            f"5. burst at c=32 on the queued backlog: {burst.ops_per_s:,.0f} creates/s,"
            f" p99 {quantiles(burst.stats('create'))[1]:.1f} ms; depth {depth_a:,} before"
            f" kill -9, {depth_b:,} after the restart"
        )
        self.report.check(depth_b >= depth_a, f"5. kill -9 lost ops: {depth_a} -> {depth_b}")
        self.verify_big(db, spool_dir, total=fill.ops + len(http_acked), acked=http_acked)

    def verify_big(self, db: Path, spool_dir: Path, *, total: int, acked: list[str]) -> None:
        left = spool_depth_offline(spool_dir)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0]
        ok = rows <= total <= rows + left
        self.report.add(
            Row(
                "5. check: server rows + ops left in the spool",
                f"{rows:,} + {left:,} for {total:,} ops ({len(acked):,} over HTTP)",
                target="rows <= ops <= rows + left",
            ),
            passed=ok,
        )
        self.report.check(ok, "5. ops missing or extra after the big drain")


# ---- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark spoold with real daemons (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run < 60 s")
    parser.add_argument("--backlog", type=int, help="scenario 4 backlog (default 100,000)")
    parser.add_argument("--big-backlog", type=int, help="scenario 5 backlog (default 1,000,000)")
    parser.add_argument(
        "--big-drain-seconds", type=float, help="bound of scenario 5's drain (default 180 s)"
    )
    parser.add_argument("--ingest-concurrency", type=int, default=4)
    parser.add_argument(
        "--drain-batch",
        type=int,
        default=SpooldConfig().batch_size,
        help="items per batch of the upsert diagnostic (default: spoold's SPOOLD_BATCH_SIZE)",
    )
    parser.add_argument(
        "--spoold-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra SPOOLD_* setting for every spoold started (repeatable; for diagnosis)",
    )
    parser.add_argument("--skip-big", action="store_true", help="leave out scenario 5")
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of both daemons (default: theirs, INFO)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (spools, logs)")
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy each scenario's spoold (and the drain's server) into DIR; slows them",
    )
    return parser.parse_args(argv)


def sized(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    changes = {
        "backlog": args.backlog,
        "big_backlog": args.big_backlog,
        "big_drain_s": args.big_drain_seconds,
    }
    values = {**sizes.__dict__, **{k: v for k, v in changes.items() if v is not None}}
    return Sizes(**values)


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
    report = bench.report
    started = time.monotonic()
    start_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    steps: list[Callable[[], None]] = [bench.accept]
    steps += [bench.paced_down, bench.lifecycle, bench.drain]
    if not args.skip_big:
        steps.append(bench.big_backlog)
    with sigterm_as_interrupt():
        try:
            for step in steps:
                step()
        except KeyboardInterrupt:
            print("interrupted; daemons stopped", file=sys.stderr)
            return 130
        except Exception as exc:
            report.broken.append(f"run failed: {exc!r}")
        finally:
            bench.daemons.stop_all()
            for log in sorted(workdir.glob("*.log")):
                text = log.read_text(errors="replace")
                if "Traceback" in text or '"level":"critical"' in text:
                    report.broken.append(f"{log.name} has errors:\n{tail(log)}")
            if args.keep:
                print(f"kept {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"spoold benchmark ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs,"
        f" sqlite {sqlite3.sqlite_version}, daemon log level {args.log_level or 'default (INFO)'}"
    )
    print(
        "load generator: bench/loadgen.py in this process (1 client process,"
        f" {event_loop_name()}); CPU columns are % of one core; p50/p99 client-side, per request"
    )
    print(
        "scenarios 1, 2a, 3 and 5a/5b: spoold's upstream is DOWN (a closed port), so the"
        " drainer does not compete for the CPU; 2a/2b are open-loop (latency from the"
        " scheduled send time)"
    )
    if args.spoold_env:
        print(f"extra spoold settings (diagnosis): {' '.join(args.spoold_env)}")
    print()
    report.print_table()
    print()
    for note in report.notes:
        print(f"note: {note}")
    end_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at start {start_load}, at end {end_load} (1/5/15 min)")
    print(f"total time {time.monotonic() - started:.0f} s")
    for problem in report.broken:
        print(f"PROBLEM: {problem}")
    for miss in report.missed:
        print(f"MISS: {miss}")
    if report.broken:
        return 2
    return 1 if report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
