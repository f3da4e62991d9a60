"""spoold's accept path against this machine's ceiling, measured in one run.

    python bench/spoold_accept.py                       # full run (60-s latency rounds)
    python bench/spoold_accept.py --seconds 15          # shorter latency rounds
    python bench/spoold_accept.py --baseline-root /tmp/old-tree   # old spoold side by side
    python bench/spoold_accept.py --profile /tmp/prof   # py-spy of spoold per scenario

Processes, each on a free 127.0.0.1 port, stopped by PID at the end:

- **the ceiling**: this file run as ``ceiling`` in a process of its own, a minimal
  aiohttp server that does what spoold cannot avoid doing and nothing else: it reads the
  body, validates it with the same contract models spoold uses (``RunCreate``,
  ``patch_changes``; the same 422s), builds the same operation, serialises it with orjson
  and appends it to one file with ONE ``fsync`` per group of concurrent requests (a simple
  group commit: the requests that arrive while a write+fsync runs form the next group),
  then answers. No queue, no index, no request log.
- **spoold** with its default settings and its upstream DOWN (a closed port), so its
  drainer does not compete for the cores: creates at c=32, then create+PATCH lifecycles at
  c=32 (a lifecycle is one create and one PATCH of that run; the figure is lifecycles/s).
  CPU per accepted operation is spoold's utime+stime (``/proc/PID/stat``) over the round
  divided by the operations answered 2xx.
- **latency rounds** of ``--seconds`` (60 by default): lifecycles at c=32, closed loop,
  every request timed; p99 and max over all requests. Once with the upstream down, once
  with a live ``telemetry-server`` that the drainer forwards to meanwhile.
- after each spoold round, its accept commits: how many, their mean, how many took over
  25 / 100 ms (``spoold_spool_commit_seconds``), and every commit of 50 ms or more
  attributed from spoold's ``accept_commit_slow`` log lines (slowest phase: classify /
  spool put + fsync / index commit; GC, a WAL checkpoint, or a thread waiting for a CPU
  for a quarter of it or more).
- with ``--baseline-root DIR``, the same spoold rounds (creates, lifecycles) against the
  spoold of another tree (e.g. ``git worktree add --detach /tmp/old <base>``), in this run,
  interleaved with this tree's (creates: new, old; lifecycles: old, new).

With ``--callgrind N``, spoold (and the baseline's) also runs under valgrind's callgrind
for N creates and N/2 lifecycles: thousands of user-space instructions per 2xx request,
all threads, the same whatever else runs on the machine (~50x slower; a few minutes).

``--rows N`` is the backlog spoold holds while it is measured: N runs put into its spool
through its batch endpoint before the rounds (upstream down, so they stay queued; 0 by
default). The figures carry it.

Verification (``verified`` in ``--json``): every create and PATCH acknowledged by the
upstream-down spoold is in its spool file afterwards (read back read-only, spoold
stopped); every create and PATCH acknowledged during the live round is on the server
after the drain (its SQLite file, server stopped), the PATCH in its final state.
Exit status: 0 when every target is met and every check held; 1 when a target is
missed; 2 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from fsync_probe import FsyncProbe
from loadgen import LoadResult, event_loop_name, run_load
from report import Figure, format_row, write_json
from server_bench import Create, Lifecycle, Profiler, free_port
from spoold_bench import HOST, ROOT, Daemon, Daemons, clean_env, fill_over_http

CONCURRENCY = 32
CREATES_TARGET = 3500.0
LIFECYCLES_TARGET = 1700.0
CPU_MS_TARGET = 0.25
P99_MS_TARGET = 25.0
MAX_MS_TARGET = 100.0


# ---- the ceiling server (runs in its own process) ------------------------------------


def ceiling_main(port: int, path: Path) -> None:
    """aiohttp + the contract's validation + one fsync per group of concurrent requests."""
    from aiohttp import web

    from server.contract.errors import ApiError
    from server.contract.models import RunCreate
    from server.contract.timestamps import utc_now
    from server.contract.updates import patch_changes
    from server.contract.validation import parse_model
    from server.edge.requests import MAX_JSON_DEPTH, event_id_of, json_fields_context, read_json
    from server.edge.responses import error_response, json_response
    from server.runtime.event_loop import new_loop
    from spoold.config import SpooldConfig
    from spoold.spool.operations import create_op, update_op

    class GroupCommit:
        """Requests arriving while one write+fsync runs are written together by the next."""

        def __init__(self, file: Path) -> None:
            self.fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self.pending: list[tuple[bytes, asyncio.Future[None]]] = []
            self.busy = False
            self.groups = 0

        async def write(self, data: bytes) -> None:
            future = asyncio.get_running_loop().create_future()
            self.pending.append((data, future))
            if not self.busy:
                self.busy = True
                asyncio.get_running_loop().create_task(self.flush())
            await future

        def _write_sync(self, payload: bytes) -> None:
            os.write(self.fd, payload)
            os.fsync(self.fd)

        async def flush(self) -> None:
            loop = asyncio.get_running_loop()
            try:
                for _ in range(10**9):  # until nothing waits
                    if not self.pending:
                        break
                    group, self.pending = self.pending, []
                    payload = b"\n".join(data for data, _ in group) + b"\n"
                    await loop.run_in_executor(None, self._write_sync, payload)
                    self.groups += 1
                    for _, future in group:
                        future.set_result(None)
            finally:
                self.busy = False

    log = GroupCommit(path)
    routes = web.RouteTableDef()

    @routes.post("/api/v1/runs")
    async def create(request: web.Request) -> web.Response:
        run = parse_model(RunCreate, await read_json(request), context=json_fields_context(request))
        await log.write(orjson.dumps(create_op(run, utc_now())))
        return json_response(
            {"status": "created", "event_id": run.event_id, "run_id": run.run_id}, 201
        )

    @routes.patch("/api/v1/runs/{event_id}")
    async def update(request: web.Request) -> web.Response:
        event_id = event_id_of(request)
        changes = patch_changes(
            await read_json(request), event_id, context=json_fields_context(request)
        )
        await log.write(orjson.dumps(update_op(event_id, changes, utc_now())))
        return json_response(
            {"event_id": event_id, "updated": True, "fields_updated": list(changes)}
        )

    @routes.get("/health")
    async def health(request: web.Request) -> web.Response:
        return json_response({"status": "ok", "groups": log.groups})

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except ApiError as exc:  # the contract's 4xx, as spoold answers them; no request log
            return error_response(exc)

    config = SpooldConfig()
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[errors])
    app[MAX_JSON_DEPTH] = config.upstream_max_json_depth
    app.add_routes(routes)
    web.run_app(
        app,
        host=HOST,
        port=port,
        print=None,
        access_log=None,
        loop=new_loop(os.environ.get("SPOOLD_EVENT_LOOP", "auto")),  # spoold's loop
    )


# ---- rounds --------------------------------------------------------------------------


@dataclass
class Round:
    name: str
    result: LoadResult
    cpu_s: float  # the daemon's CPU seconds over the round
    #: When the measured load began and ended (unix times), for the fsync probe's window.
    started: float = 0.0
    ended: float = 0.0

    @property
    def ok_requests(self) -> int:
        return sum(
            n
            for stats in self.result.recording.labels.values()
            for status, n in stats.statuses.items()
            if 200 <= status < 300
        )

    @property
    def cpu_ms_per_op(self) -> float:
        return 1e3 * self.cpu_s / self.ok_requests if self.ok_requests else math.nan

    @property
    def failures(self) -> int:
        stats = self.result.stats()
        return stats.non_2xx + sum(stats.errors.values())

    def quantiles_ms(self) -> tuple[float, float, float]:
        return self.result.stats().quantiles_ms()


def measure(
    daemon: Daemon,
    op: Any,
    name: str,
    *,
    seconds: float,
    profile: Path | None,
    warmup: int = 500,
) -> Round:
    """A warm-up, then one closed-loop round at c=32 bounded by ``seconds``."""
    run_load(daemon.base_url, op, name="warmup", concurrency=CONCURRENCY, max_ops=warmup,
             max_seconds=20)  # fmt: skip
    profiler = Profiler.start(profile, daemon.pid, f"{daemon.name} {name}")
    log_offset = daemon.log_path.stat().st_size if daemon.log_path.exists() else 0
    commits_before = commit_buckets(daemon)
    cpu_before = daemon.cpu_seconds()
    started = time.time()
    try:
        result = run_load(
            daemon.base_url,
            op,
            name=f"{daemon.name}: {name}",
            concurrency=CONCURRENCY,
            max_ops=10**8,
            max_seconds=seconds,
        )
    finally:
        if profiler is not None:
            profiler.stop()
    round_ = Round(name, result, daemon.cpu_seconds() - cpu_before, started, time.time())
    print(result.format(), file=sys.stderr)
    print(f"  {daemon.name} CPU {round_.cpu_ms_per_op:.3f} ms per 2xx request", file=sys.stderr)
    if commits_before:
        print(f"  {describe_commits(commits_before, commit_buckets(daemon))}", file=sys.stderr)
        print(f"  {describe_slow(slow_commits(daemon.log_path, log_offset))}", file=sys.stderr)
    return round_


def slow_commits(log_path: Path, offset: int) -> list[dict[str, Any]]:
    """spoold's ``accept_commit_slow`` lines written since ``offset`` (its JSON log)."""
    found = []
    with log_path.open("rb") as log:
        log.seek(offset)
        for line in log:
            if b'"accept_commit_slow"' in line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    found.append(orjson.loads(line))
    return found


def describe_slow(slow: list[dict[str, Any]]) -> str:
    """What the accept thread was doing during each slow commit (spoold.accept logs them):
    the slowest phase, and whether a GC or a WAL checkpoint ran for much of it."""
    if not slow:
        return "slow accept commits (>= 50 ms): none"
    by_phase: dict[str, int] = {}
    for entry in slow:
        by_phase[entry["slowest"]] = by_phase.get(entry["slowest"], 0) + 1
    causes = {
        "gc": lambda entry: entry["gc_ms"],
        "spool_checkpoint": lambda entry: entry["spool_checkpoint_ms"],
        "index_checkpoint": lambda entry: entry["index_checkpoint_ms"],
        "cpu_wait": lambda entry: (
            entry.get("thread_runqueue_ms", 0) + entry.get("loop_runqueue_ms", 0)
        ),
    }
    hits = {
        name: [entry for entry in slow if took(entry) >= 0.25 * entry["total_ms"]]
        for name, took in causes.items()
    }
    gc, spool_cp, index_cp, starved = (len(found) for found in hits.values())
    named = {id(entry) for found in hits.values() for entry in found}
    alone = sum(1 for entry in slow if id(entry) not in named)
    worst = max(slow, key=lambda entry: entry["total_ms"])
    phases = ", ".join(f"{phase} {n}" for phase, n in sorted(by_phase.items()))
    return (
        f"slow accept commits (>= 50 ms): {len(slow)}; slowest phase: {phases}; GC for >= 1/4"
        f" of it: {gc}; spool checkpoint running: {spool_cp}; index checkpoint running:"
        f" {index_cp}; waiting for a CPU (accept or loop thread): {starved}; none of these (the disk alone):"
        f" {alone}; worst {orjson.dumps({k: v for k, v in worst.items() if k.endswith(('_ms', 'operations'))}).decode()}"
    )


def commit_buckets(daemon: Daemon) -> dict[str, float]:
    """spoold's accept-commit histogram (``spoold_spool_commit_seconds``), cumulative
    counts by upper bound ("+Inf", "sum" and "count" included); {} for the ceiling."""
    request = urllib.request.Request(daemon.base_url + "/metrics", headers={"Accept": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    except (OSError, urllib.error.HTTPError):
        return {}
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("spoold_spool_commit_seconds"):
            continue
        name, value = line.rsplit(" ", 1)
        if 'le="' in name:
            buckets[name.split('le="')[1].split('"')[0]] = float(value)
        elif name.endswith(("_sum", "_count")):
            buckets[name.rsplit("_", 1)[1]] = float(value)
    return buckets


def describe_commits(before: dict[str, float], after: dict[str, float]) -> str:
    """Attribution of pauses to the accept commit (classify + spool fsync + index commit):
    how many group commits the round made, their mean, and how many took longer than
    25 / 100 ms (a request waiting on such a commit waited at least that long)."""
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    count = delta.get("count", 0.0)
    if not count:
        return "accept commits: none"
    slow = {bound: count - delta.get(bound, count) for bound in ("0.025", "0.1")}
    return (
        f"accept commits: {count:,.0f}, mean {1e3 * delta.get('sum', 0.0) / count:.2f} ms;"
        f" > 25 ms: {slow['0.025']:,.0f}; > 100 ms: {slow['0.1']:,.0f}"
    )


# ---- verification ------------------------------------------------------------------


def spooled_event_ids(spool_dir: Path) -> tuple[set[str], set[str], int]:
    """(event_ids with a create, with an update, operations) queued in a stopped spoold's
    spool, read-only, a group at a time (a 1M-op backlog is not held decoded)."""
    from spoold.spool.codec import decode_group
    from spoold.spool.layout import DB_FILE
    from spoold.spool.store import _LIVE, TABLE

    uri = f"{(spool_dir / DB_FILE).resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30)
    creates: set[str] = set()
    updates: set[str] = set()
    count = 0
    try:
        for (data,) in conn.execute(f"SELECT data FROM {TABLE} WHERE {_LIVE} ORDER BY _id"):
            group = decode_group(bytes(data))
            if not group.valid:
                raise RuntimeError("an undecodable group in the spool")
            for op in group.ops:
                (creates if op["kind"] == "create" else updates).add(op["event_id"])
            count += len(group.ops)
    finally:
        conn.close()
    return creates, updates, count


def check_spool(spool_dir: Path, rounds: Sequence[Round]) -> list[str]:
    """Every acknowledged create and PATCH of these rounds is queued in the spool."""
    creates, updates, count = spooled_event_ids(spool_dir)
    problems = []
    for round_ in rounds:
        notes = round_.result.recording.notes
        acked, patched = notes.get("acked", []), notes.get("patched", [])
        lost = sum(1 for event_id in acked if event_id not in creates)
        lost_patches = sum(1 for event_id in patched if event_id not in updates)
        if lost or lost_patches or not acked:
            problems.append(
                f"{round_.name}: {lost} of {len(acked)} acked creates and {lost_patches} of"
                f" {len(patched)} acked PATCHes missing from the spool"
            )
    print(f"spool check: {count:,} ops queued; {problems or 'all acked writes found'}",
          file=sys.stderr)  # fmt: skip
    return problems


def check_server(db: Path, round_: Round) -> list[str]:
    """Every create acked in the live round is on the server, every acked PATCH applied."""
    notes = round_.result.recording.notes
    acked, patched = notes.get("acked", []), set(notes.get("patched", []))
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        rows = dict(conn.execute("SELECT event_id, status FROM agent_runs"))
    finally:
        conn.close()
    missing = sum(1 for event_id in acked if event_id not in rows)
    unpatched = sum(1 for event_id in patched if rows.get(event_id) != "success")
    print(f"server check: {len(rows):,} rows; {missing} of {len(acked):,} acked creates missing,"
          f" {unpatched} of {len(patched):,} acked PATCHes not applied", file=sys.stderr)  # fmt: skip
    if missing or unpatched or not acked:
        return [f"{round_.name}: {missing} creates missing, {unpatched} PATCHes not applied"]
    return []


def wait_drained(daemon: Daemon, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded by timeout_s
        if daemon.health()["spool"]["depth"] == 0:
            return True
        time.sleep(0.2)
    return False


# ---- the run ---------------------------------------------------------------------


class CodeDaemons(Daemons):
    """Daemons whose spoold runs from ``code_root`` (``python -P``: PYTHONPATH decides)."""

    def __init__(self, workdir: Path, code_root: Path | None, log_level: str | None) -> None:
        super().__init__(workdir, log_level)
        self.code_root = code_root

    def spoold(
        self, name: str, spool_dir: Path, upstream: str, extra: dict[str, str] | None = None
    ) -> Daemon:
        daemon = super().spoold(name, spool_dir, upstream, extra)
        if self.code_root is not None:
            daemon.argv[1:1] = ["-P"]
            daemon.env["PYTHONPATH"] = str(self.code_root)
        return daemon

    def ceiling(self, name: str, path: Path) -> Daemon:
        port = free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "ceiling", "--port", str(port),
                "--file", str(path)]  # fmt: skip
        env = clean_env({"PYTHONPATH": str(ROOT)})
        daemon = Daemon(name, argv, env, self.workdir / f"{name}.log")
        self.started.append(daemon)
        return daemon


def start_sidecar(
    daemons: CodeDaemons, label: str, workdir: Path, args: argparse.Namespace
) -> tuple[Daemon, Path]:
    """A spoold with its upstream down, holding the ``--rows`` backlog."""
    spool_dir = workdir / f"{label}-spool"
    down = f"http://{HOST}:{free_port()}"  # nothing listens there
    # A 1M-op backlog takes ~0.8 GiB of spool: the cap is raised so that it stays below
    # the 80% "degraded" mark (as bench/spoold_bench.py does for its 1M scenario).
    sidecar = daemons.spoold(label, spool_dir, down, {"SPOOLD_MAX_SPOOL_MB": "4096"})
    sidecar.start()
    if args.rows:
        fill = fill_over_http(sidecar, args.rows, senders=3, max_seconds=600, keep_ids=False)
        print(f"{label} backlog: {fill.describe()}", file=sys.stderr)
    return sidecar, spool_dir


def run(
    args: argparse.Namespace, workdir: Path, probe: FsyncProbe | None = None
) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    problems: list[str] = []
    rows = args.rows
    daemons = CodeDaemons(workdir, None, args.log_level)
    old = CodeDaemons(workdir, args.baseline_root, args.log_level) if args.baseline_root else None
    try:
        ceiling = daemons.ceiling("ceiling", workdir / "ceiling.log.bin")
        ceiling.start()
        ceiling_creates = measure(ceiling, Create(random.Random("ceil-c")), "creates c=32",
                                  seconds=args.round_seconds, profile=None)  # fmt: skip
        ceiling_lifecycles = measure(ceiling, Lifecycle(random.Random("ceil-l")),
                                     "lifecycles c=32", seconds=args.round_seconds,
                                     profile=None)  # fmt: skip
        ceiling.stop()
        ceil_c = ceiling_creates.result.requests_per_s("create")
        ceil_l = ceiling_lifecycles.result.ops_per_s
        figures += [
            Figure("ceiling (aiohttp+validation+group fsync) creates c=32", "creates/s", ceil_c,
                   note=f"CPU {ceiling_creates.cpu_ms_per_op:.3f} ms/op"),
            Figure("ceiling lifecycles c=32", "lifecycles/s", ceil_l,
                   note=f"CPU {ceiling_lifecycles.cpu_ms_per_op:.3f} ms/op"),
            # The machine's own noise floor for the latency targets, in this run.
            Figure("ceiling lifecycles c=32", "p99 ms", ceiling_lifecycles.quantiles_ms()[1],
                   higher_is_better=False),
            Figure("ceiling lifecycles c=32", "max ms", ceiling_lifecycles.quantiles_ms()[2],
                   higher_is_better=False),
        ]  # fmt: skip

        measured = [("spoold", daemons)] + ([("old-spoold", old)] if old is not None else [])
        sidecars = {label: start_sidecar(owner, label, workdir, args) for label, owner in measured}
        # Interleaved (A B, then B A), so that both trees meet the same machine: on a
        # shared one, what else runs changes from one minute to the next.
        creates: dict[str, Round] = {}
        lifecycles: dict[str, Round] = {}
        for label in sidecars:
            creates[label] = measure(sidecars[label][0], Create(random.Random(f"{label}-c")),
                                     "creates c=32", seconds=args.round_seconds,
                                     profile=args.profile)  # fmt: skip
        for label in reversed(sidecars):
            lifecycles[label] = measure(sidecars[label][0],
                                        Lifecycle(random.Random(f"{label}-l")),
                                        "lifecycles c=32", seconds=args.round_seconds,
                                        profile=args.profile)  # fmt: skip
        for label, (sidecar, spool_dir) in sidecars.items():
            new = label == "spoold"
            rate_c = creates[label].result.requests_per_s("create")
            rate_l = lifecycles[label].result.ops_per_s
            ops = creates[label].ok_requests + lifecycles[label].ok_requests
            cpu_s = creates[label].cpu_s + lifecycles[label].cpu_s
            cpu_ms = 1e3 * cpu_s / ops if ops else math.nan
            figures += [
                Figure(f"{label} creates c=32, upstream down", "creates/s", rate_c,
                       CREATES_TARGET if new else None, rows=rows,
                       note=f"{100 * rate_c / ceil_c:.0f}% of ceiling; CPU"
                            f" {creates[label].cpu_ms_per_op:.3f} ms/op"),
                Figure(f"{label} create+PATCH c=32, upstream down", "lifecycles/s", rate_l,
                       LIFECYCLES_TARGET if new else None, rows=rows,
                       note=f"{100 * rate_l / ceil_l:.0f}% of ceiling; CPU"
                            f" {lifecycles[label].cpu_ms_per_op:.3f} ms/op"),
                Figure(f"{label} CPU per accepted op (both rounds)", "ms/op", cpu_ms,
                       CPU_MS_TARGET if new else None, higher_is_better=False, rows=rows),
                Figure(f"{label} creates as share of ceiling", "%", 100 * rate_c / ceil_c,
                       rows=rows),
                Figure(f"{label} lifecycles as share of ceiling", "%", 100 * rate_l / ceil_l,
                       rows=rows),
            ]  # fmt: skip
            rounds = [creates[label], lifecycles[label]]
            if new:
                latency = measure(sidecar, Lifecycle(random.Random("lat-down")),
                                  f"{args.seconds:.0f}-s lifecycles c=32",
                                  seconds=args.seconds, profile=args.profile)  # fmt: skip
                rounds.append(latency)
                figures += latency_figures(
                    "spoold lifecycles c=32, upstream down", latency, rows, probe
                )
            sidecar.stop()
            problems += check_spool(spool_dir, rounds)
            for round_ in rounds:
                if round_.failures:
                    problems.append(f"{label} {round_.name}: {round_.failures} failed requests")

        figures += live_round(daemons, workdir, args, problems, probe)
        if args.callgrind:
            for label, owner in measured:
                figures += callgrind_figures(owner, label, workdir, args.callgrind, rows)
    finally:
        daemons.stop_all()
        if old is not None:
            old.stop_all()
    return figures, problems


def callgrind_figures(
    owner: CodeDaemons, label: str, workdir: Path, requests: int, rows: int
) -> list[Figure]:
    """spoold under callgrind: k instructions per 2xx request, creates then lifecycles."""
    figures = []
    for scenario, op, count in (
        ("creates", Create(random.Random(f"{label}-cg-c")), requests),
        ("lifecycles", Lifecycle(random.Random(f"{label}-cg-l")), max(1, requests // 2)),
    ):
        out = workdir / f"{label}-{scenario}.callgrind"
        sidecar = owner.spoold(f"{label}-cg-{scenario}", workdir / f"{label}-cg-{scenario}",
                               f"http://{HOST}:{free_port()}")  # fmt: skip
        sidecar.argv[:0] = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                            f"--callgrind-out-file={out}"]  # fmt: skip
        sidecar.start(timeout_s=900)
        try:
            run_load(sidecar.base_url, op, name="warmup", concurrency=CONCURRENCY, max_ops=200,
                     max_seconds=600)  # fmt: skip
            callgrind_control(sidecar.pid, "-i", "on")
            callgrind_control(sidecar.pid, "-z")
            result = run_load(sidecar.base_url, op, name=f"{label} callgrind {scenario}",
                              concurrency=CONCURRENCY, max_ops=count, max_seconds=900)  # fmt: skip
            callgrind_control(sidecar.pid, "-d", "measured")
            total = callgrind_summary(Path(f"{out}.1"))
        finally:
            sidecar.stop()
        ok = Round(scenario, result, 0.0).ok_requests
        per_request = total / ok / 1e3 if ok else math.nan
        print(f"  {label} under callgrind, {scenario}: {per_request:,.1f} k instructions per 2xx"
              f" request ({ok:,} requests)", file=sys.stderr)  # fmt: skip
        figures.append(
            Figure(f"{label} {scenario} c=32 under callgrind", "k instr/req", per_request,
                   higher_is_better=False, rows=rows, note="user space, all threads")
        )  # fmt: skip
    return figures


def callgrind_control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True,
                   timeout=120)  # fmt: skip


def callgrind_summary(dump: Path) -> int:
    """The instructions a callgrind dump counts (written asynchronously: waited for)."""
    for _ in range(600):  # bounded: 60 s
        text = dump.read_text() if dump.exists() else ""
        for line in text.splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError(f"no callgrind summary in {dump}")


def latency_figures(
    scenario: str, round_: Round, rows: int, probe: FsyncProbe | None = None
) -> list[Figure]:
    """A latency round's p99 and max, and the independent fsync probe's worst sample in
    the same window (bench/fsync_probe.py): a max the disk also had is the disk's."""
    _, p99, worst = round_.quantiles_ms()
    note = f"{round_.result.ops_per_s:,.0f} lifecycles/s; {round_.result.elapsed_s:.0f} s"
    disk = probe.window(round_.started, round_.ended) if probe is not None else None
    figures = [
        Figure(scenario, "p99 ms", p99, P99_MS_TARGET, higher_is_better=False, rows=rows,
               note=note),
        Figure(scenario, "max ms", worst, MAX_MS_TARGET, higher_is_better=False, rows=rows,
               note=note + (f"; the fsync probe's worst: {disk.describe()}" if disk else "")),
    ]  # fmt: skip
    if disk is not None and disk.samples:
        figures.append(
            Figure(scenario, "disk fsync max ms", disk.worst_ms, higher_is_better=False,
                   rows=rows, note="an independent 4 KiB fdatasync every 20 ms, same round")
        )  # fmt: skip
    return figures


def live_round(
    daemons: CodeDaemons,
    workdir: Path,
    args: argparse.Namespace,
    problems: list[str],
    probe: FsyncProbe | None = None,
) -> list[Figure]:
    """The latency round with a live server that the drainer forwards to meanwhile."""
    db = workdir / "live.sqlite"
    server = daemons.server("server", db)
    server.start()
    sidecar = daemons.spoold("spoold-live", workdir / "live-spool", server.base_url)
    sidecar.start()
    latency = measure(sidecar, Lifecycle(random.Random("lat-live")),
                      f"{args.seconds:.0f}-s lifecycles c=32, draining",
                      seconds=args.seconds, profile=args.profile)  # fmt: skip
    if not wait_drained(sidecar, 300):
        problems.append("live round: spoold did not drain within 300 s")
    sidecar.stop()
    server.stop()
    problems += check_server(db, latency)
    if latency.failures:
        problems.append(f"live round: {latency.failures} failed requests")
    return latency_figures(
        "spoold lifecycles c=32, live server draining", latency, args.rows, probe
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="each latency round")
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=12.0,
        help="each throughput round (ceiling, spoold creates, lifecycles)",
    )
    parser.add_argument("--rows", type=int, default=0, help="backlog queued before the rounds")
    parser.add_argument("--baseline-root", type=Path, help="also measure the spoold of this tree")
    parser.add_argument("--profile", type=Path, help="py-spy of spoold per round into DIR")
    parser.add_argument(
        "--callgrind",
        type=int,
        default=0,
        metavar="N",
        help="also count instructions per request over N creates (valgrind)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here (bench/report.py)")
    parser.add_argument("--log-level", help="daemons' log level (default: theirs, INFO)")
    parser.add_argument(
        "--no-disk-probe",
        action="store_true",
        help="no independent fsync probe beside the latency rounds (bench/fsync_probe.py)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ceiling"]:
        sub = argparse.ArgumentParser()
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--file", type=Path, required=True)
        options = sub.parse_args(argv[1:])
        ceiling_main(options.port, options.file)
        return 0
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="spoold-accept-"))
    print(f"work dir {workdir}; client loop {event_loop_name()}; code {ROOT}", file=sys.stderr)
    try:
        with FsyncProbe(workdir, enabled=not args.no_disk_probe) as probe:
            figures, problems = run(args, workdir, probe)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    for figure in figures:
        print(format_row(figure))
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    verified = not problems
    if args.json is not None:
        write_json(args.json, figures, verified=verified)
    if problems:
        return 2
    return 0 if all(figure.met is not False for figure in figures) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
