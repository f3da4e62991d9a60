"""Benchmark of the central server's writes: the real ``telemetry-server`` over real HTTP.

    python bench/server_bench.py --rows 1000000 --json out.json   # full run at 1M rows
    python bench/server_bench.py                                  # 100,000 rows, 60 s lifecycle
    python bench/server_bench.py --quick                          # smoke run, < 60 s
    git worktree add --detach /tmp/base <base-commit>
    python bench/server_bench.py --compare-root /tmp/base         # before/after, one run

What it does, in order, printing one table and the figures at the end:

1. Prefills a database with ``--rows`` fleet-shaped runs (2,000 agents, Zipf-like;
   85% success, 8% failure, 3% running, every status; 20 job types; 90 days): the
   first 100,000 are real server rows (``RunCreate`` + ``insert_params``), the rest
   copies of them made by SQLite, each copy a later slice of the history.
2. Starts ``telemetry-server`` on a free 127.0.0.1 port on a copy of that file and
   measures ``POST /api/v1/runs/batch`` (100 runs per batch, concurrency 4), single
   creates at concurrency 32, then the create + PATCH lifecycle at concurrency 32
   for ``--seconds`` (p99 and max latency: the "no stalls" targets).
3. Baseline, same run, same disk: raw ``sqlite3`` ``executemany`` of exactly the
   batch scenario's rows, one transaction per batch (the durability the endpoint
   promises per request), WAL + synchronous=FULL, into another copy of the
   prefilled file (same schema, indexes and rows). Batch ingest is quoted as a %
   of it, with the CPU per row of each Python step of the batch path.
4. Stops the server and checks that every acknowledged write is in the file:
   each event_id answered 201 ``created`` (or counted in a batch answer) must
   exist, and each run whose PATCH was answered 200 must be in its final state.
5. With ``--compare-root DIR``, steps 2 and 4 run first for the server of that
   source tree (same prefill, same baseline), so before and after sit side by side.
6. With ``--reads``, the older read phases follow (filtered lists, single GETs and
   metadata at ``--rows-small`` and ``--rows-large``; bench/list_cpu.py and
   bench/ops_reads.py measure list and operational reads in more depth).

The client is ``bench/loadgen.py`` in this process (a different process from
the server), on uvloop when installed; ``--client-procs N`` spreads it over N
forked processes instead. The machine has two cores, so the client's CPU is
reported next to the server's for every scenario. The server runs with its
default log level (INFO: one JSON line per request, as operators run it)
unless ``--server-log-level`` says otherwise; its log is kept in the temp dir.
``--json PATH`` writes the figures with their targets (bench/report.py).

The server is always stopped by its PID at the end (SIGTERM, then SIGKILL
after a grace), also when a scenario fails or the bench is interrupted.
Exit status: 0 if every target passed and every acknowledged write was
found, 1 if a target was missed, 2 if verification failed or a run broke.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsync_probe import FsyncProbe, ProbeWindow
from loadgen import Client, LabelStats, LoadResult, event_loop_name, run_load
from report import Figure, format_row, write_json

from server.contract.models import RunCreate
from server.contract.run_record import RUN_COLUMNS
from server.storage.connection import WRITER_CACHE_KIB
from server.storage.runs import _INSERT_SQL, insert_params
from server.storage.schema import MIGRATIONS, migrate

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

# ---- realistic data ------------------------------------------------------------------

_TEAMS = ("seo", "content", "data", "infra", "qa")
#: A fleet: 2,000 agents in five teams (the issue's "thousands of agents").
AGENT_NAMES: tuple[str, ...] = tuple(
    f"{_TEAMS[i % len(_TEAMS)]}_fleet.agent_{i:04d}" for i in range(2000)
)
JOB_TYPES: tuple[str, ...] = (
    "insight_generation",
    "data_processing",
    "model_training",
    "feature_implementation",
    "etl_pipeline",
    "seo_analysis",
    "content_refresh",
    "link_check",
    "sitemap_build",
    "code_review",
    "test_run",
    "deployment",
    "backup",
    "report_build",
    "index_rebuild",
    "crawl",
    "translation",
    "summarisation",
    "classification",
    "cleanup",
)
#: Every status, weighted as a fleet produces them: 85% success, 8% failure, 3% running.
STATUS_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("success", 85),
    ("failure", 8),
    ("partial", 2),
    ("timeout", 1),
    ("cancelled", 1),
    ("running", 3),
)
_STATUSES = tuple(status for status, _ in STATUS_WEIGHTS)
_STATUS_CUM = tuple(
    sum(weight for _, weight in STATUS_WEIGHTS[: i + 1]) for i in range(len(STATUS_WEIGHTS))
)
#: Zipf-like agent popularity: a few busy agents, a long tail of quiet ones.
_AGENT_CUM = tuple(sum((k + 1) ** -0.8 for k in range(i + 1)) for i in range(len(AGENT_NAMES)))
HISTORY = timedelta(days=90)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def run_payload(
    rng: random.Random,
    *,
    start: datetime,
    created: datetime | None = None,
    status: str = "running",
    agent_name: str | None = None,
) -> dict[str, Any]:
    """One run as an agent posts it (the guide's fields, realistic sizes)."""
    agent = agent_name or rng.choices(AGENT_NAMES, cum_weights=_AGENT_CUM)[0]
    event_id = str(uuid.uuid4())
    host = rng.randrange(200)
    body: dict[str, Any] = {
        "event_id": event_id,
        "run_id": f"{iso(start)}-{agent}-{event_id[:8]}",
        "agent_name": agent,
        "job_type": rng.choice(JOB_TYPES),
        "start_time": iso(start),
        "status": status,
        "product": "seo-intelligence",
        "platform": "api",
        "website": f"site{host % 17}.example.com",
        "host": f"worker-{host:03d}",
        "environment": "production",
        "trigger_type": "cron",
        "git_repo": f"https://github.com/example-org/repo-{host % 9}",
        "git_branch": "main",
        "items_discovered": rng.randrange(500),
        "metrics_json": {"model": "small", "tokens_in": rng.randrange(10_000)},
        "context_json": {"attempt": 1},
    }
    if created is not None:
        body["created_at"] = iso(created)
    if status != "running":
        duration_ms = int(rng.lognormvariate(9.5, 1.2))
        body["end_time"] = iso(start + timedelta(milliseconds=duration_ms))
        body["duration_ms"] = duration_ms
        body["items_succeeded"] = rng.randrange(500)
        body["items_failed"] = rng.randrange(5) if status != "success" else 0
        body["output_summary"] = f"processed {body['items_succeeded']} items"
        if status in ("failure", "timeout", "partial"):
            body["error_summary"] = "upstream returned 503"
    return body


def finish_payload(rng: random.Random) -> dict[str, Any]:
    """The PATCH that completes a run (phase 3 of the guide)."""
    succeeded = rng.randrange(500)
    return {
        "status": "success",
        "end_time": iso(datetime.now(UTC)),
        "duration_ms": rng.randrange(1, 60_000),
        "items_succeeded": succeeded,
        "items_failed": 0,
        "output_summary": f"processed {succeeded} items",
    }


def history_rows(
    start_index: int, count: int, total: int, history_end: datetime, seed: int
) -> Iterator[dict[str, Any]]:
    """Rows start_index .. start_index+count of a `total`-row, 90-day history, oldest first."""
    rng = random.Random(seed)
    step = HISTORY / total
    origin = history_end - HISTORY
    for index in range(start_index, start_index + count):
        created = origin + step * index + timedelta(milliseconds=rng.randrange(1000))
        roll = rng.randrange(100)
        status = _STATUSES[next(i for i, c in enumerate(_STATUS_CUM) if roll < c)]
        start = created - timedelta(milliseconds=rng.randrange(2000))
        yield run_payload(rng, start=start, created=created, status=status)


# ---- the server process --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        return orjson.loads(response.read())


class ServerProcess:
    """One ``telemetry-server`` subprocess; stop() is idempotent and always by PID."""

    def __init__(
        self,
        db: Path,
        log_path: Path,
        log_level: str,
        code_root: Path | None = None,
        extra_env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.db = db
        self.code_root = code_root
        #: Another program taking the server's --host/--port/--db (bench/server_ceiling.py).
        self.command = command
        #: More environment for the server (e.g. TELEMETRY_DATABASE_URL for PostgreSQL).
        self.extra_env = dict(extra_env or {})
        self.log_path = log_path
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.startup_s = math.nan

    def start(self, timeout_s: float = 300.0) -> None:
        executable = Path(sys.executable).with_name("telemetry-server")
        command = [str(executable)] if executable.exists() else [sys.executable, "-m", "server"]
        if self.command is not None:
            command = list(self.command)
        port = free_port()
        env = {**os.environ, "TELEMETRY_LOG_LEVEL": self.log_level, **self.extra_env}
        cwd = ROOT
        if self.code_root is not None:  # another tree's server (--compare-root)
            command = [sys.executable, "-m", "server"]
            env["PYTHONPATH"] = str(self.code_root)
            cwd = self.code_root
        for name in ("TELEMETRY_API_AUTH_ENABLED", "TELEMETRY_RATE_LIMIT_ENABLED"):
            env.pop(name, None)
        if "TELEMETRY_DATABASE_URL" not in self.extra_env:  # SQLite at --db, as asked
            env.pop("TELEMETRY_DATABASE_URL", None)
            env.pop("DATABASE_URL", None)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "--host", HOST, "--port", str(port), "--db", str(self.db)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
            )
        self.base_url = f"http://{HOST}:{port}"
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"telemetry-server exited with {self.process.returncode}; "
                    f"log tail:\n{tail(self.log_path)}"
                )
            try:
                if http_get_json(self.base_url + "/health", timeout=2).get("status") == "ok":
                    self.startup_s = time.monotonic() - started
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"telemetry-server not healthy after {timeout_s:.0f} s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        """user + system CPU of the server process, all its threads."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AssertionError):
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, grace_s: float = 30.0) -> int | None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        os.kill(process.pid, signal.SIGTERM)
        try:
            return process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            return process.wait()


class Profiler:
    """py-spy sampling the server during one scenario (``--profile DIR``; perturbs figures).

    Writes DIR/<scenario>.txt (collapsed stacks, one thread per root) and
    DIR/<scenario>.summary.txt (samples per thread, top self and inclusive frames).
    """

    def __init__(self, process: subprocess.Popen[bytes], raw: Path) -> None:
        self.process = process
        self.raw = raw

    @classmethod
    def start(
        cls, directory: Path | None, pid: int, name: str, *, gil_only: bool = False
    ) -> Profiler | None:
        """``gil_only``: sample only the thread holding the GIL (py-spy ``--gil``), so the
        samples count Python's CPU, not threads waiting in fsync or epoll."""
        if directory is None:
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        directory.mkdir(parents=True, exist_ok=True)
        slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
        raw = directory / f"{slug}.txt"
        process = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--format", "raw", "--threads",
             "--nonblocking", "--rate", "250", "--output", str(raw),
             *(["--gil"] if gil_only else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.3)  # let it attach
        return cls(process, raw)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.raw.exists():
            summary = summarize_profile(self.raw)
            self.raw.with_suffix(".summary.txt").write_text(summary)


def summarize_profile(raw: Path, top: int = 20) -> str:
    """Samples per thread and the top self / inclusive frames of a py-spy raw file."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1].rstrip("_0123456789")
        names = [frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame for frame in frames[1:]]
        total += samples
        threads[thread] += samples
        if names:
            own[names[-1]] += samples
        for frame in set(names):
            inclusive[frame] += samples
    if not total:
        return "no samples\n"
    lines = [
        f"{total} samples; by thread: "
        + ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in threads.most_common())
    ]
    lines.append("top self:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("top inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---- direct database work (pre-load, baseline, verification) -------------------------


#: The schema the prefill is made at: with ``--compare-root``, the older tree's (each
#: server then migrates its own copy at start, as an upgrade does); None: this tree's.
PREFILL_SCHEMA: int | None = None


def open_db(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    if PREFILL_SCHEMA is None:
        migrate(conn)
        return conn
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for migration in MIGRATIONS[found:PREFILL_SCHEMA]:
        conn.execute("BEGIN")
        for statement in migration.statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {migration.version:d}")
        conn.execute("COMMIT")
    return conn


def schema_of(root: Path) -> int:
    """The schema version the server of another source tree writes."""
    found = subprocess.run(
        [sys.executable, "-c", "from server.storage.schema import SCHEMA_VERSION as v; print(v)"],
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(found.stdout.strip())


def to_params(payloads: Sequence[dict[str, Any]], now: str) -> list[tuple[Any, ...]]:
    """The server's own INSERT parameters for payloads (validated by its RunCreate)."""
    return [insert_params(RunCreate.model_validate(payload), now) for payload in payloads]


def preload(
    path: Path, start_index: int, count: int, total: int, history_end: datetime
) -> tuple[list[str], float]:
    """Append rows straight into the file (fast pragmas: this is setup, not measured).

    Returns a sample of the inserted event_ids (for single GETs) and seconds taken.
    """
    started = time.monotonic()
    conn = open_db(path, "OFF")
    conn.execute("PRAGMA cache_size = -262144")
    sample: list[str] = []
    chunk = 20_000
    done = 0
    while done < count:
        n = min(chunk, count - done)
        payloads = list(
            history_rows(start_index + done, n, total, history_end, seed=start_index + done)
        )
        now = iso(history_end)
        conn.execute("BEGIN")
        conn.executemany(_INSERT_SQL, to_params(payloads, now))
        conn.execute("COMMIT")
        sample.extend(payload["event_id"] for payload in payloads[::97])
        done += n
        print(f"\r  pre-loading: {start_index + done:,}/{total:,} rows", end="", file=sys.stderr)
    print(file=sys.stderr)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sample, time.monotonic() - started


#: Rows built in Python (RunCreate + insert_params) before the rest are replicated in SQL.
PREFILL_BASE_ROWS = 100_000


def _shifted(column: str, seconds: str) -> str:
    """SQL: an instant column moved by whole seconds, its fraction and offset kept."""
    return (
        f"CASE WHEN {column} IS NULL THEN NULL ELSE "
        f"strftime('%Y-%m-%dT%H:%M:%S', {column}, '+' || ({seconds}) || ' seconds')"
        f" || substr({column}, 20) END"
    )


def prefill_fleet(path: Path, rows: int, history_end: datetime) -> float:
    """A database of ``rows`` fleet-shaped runs over 90 days, ending at history_end.

    The first PREFILL_BASE_ROWS are real server rows (``preload``); the rest are copies
    of them made by SQLite, each copy a later slice of the history (timestamps shifted,
    fresh event_ids), so 1,000,000 rows take about a minute, not ten. Agents, job types
    and statuses keep the base's skew. Returns the seconds taken.
    """
    started = time.monotonic()
    base = min(rows, PREFILL_BASE_ROWS)
    copies = math.ceil(rows / base) - 1
    preload(path, 0, base, rows, history_end)  # the oldest base/rows of the history
    if copies:
        conn = open_db(path, "OFF")
        conn.execute("PRAGMA cache_size = -262144")
        columns = [c for c in RUN_COLUMNS if c != "event_id"]
        if "late" in {row[1] for row in conn.execute("PRAGMA table_info(agent_runs)")}:
            columns.append("late")  # both instants shift alike: a copy is late as its base
        instants = {"created_at", "start_time", "end_time", "updated_at"}
        slice_s = int((HISTORY * (base / rows)).total_seconds())
        for copy in range(1, copies + 1):
            n = min(base, rows - copy * base)
            shift = str(copy * slice_s)
            select = ", ".join(_shifted(c, shift) if c in instants else c for c in columns)
            conn.execute("BEGIN")
            conn.execute(
                f"INSERT INTO agent_runs (event_id, {', '.join(columns)}) "
                f"SELECT substr(event_id, 1, 24) || printf('%012x', {copy} * 100000000 + id), "
                f"{select} FROM agent_runs WHERE id <= ?",
                (n,),
            )
            conn.execute("COMMIT")
            print(f"\r  replicating: {base + copy * base:,}/{rows:,} rows", end="", file=sys.stderr)
        print(file=sys.stderr)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    return time.monotonic() - started


#: The baseline's WAL is written over in advance, this much larger than a dry run's.
WAL_RESERVE_MARGIN = 1.1


def executemany_rate(
    template: Path,
    workdir: Path,
    batches: Sequence[Sequence[dict[str, Any]]],
    rows_per_transaction: int | None = None,
) -> tuple[float, int]:
    """Raw ``executemany`` of the batch rows, one transaction per batch (the durability the
    endpoint promises per request) or, with ``rows_per_transaction``, that many rows a
    transaction (what the server's group commit made of the same batches), WAL +
    synchronous=FULL, into a copy of the very database the server started from (same
    schema, indexes and prefill, same disk). Returns rows/s and the rows inserted.

    SQLite alone at its best, so the share measures what the server adds, not what a
    naive setup costs: the writer's page cache and pragmas, no checkpoint inside a COMMIT
    (the server's run off its commit path, on its checkpointer thread), and a WAL file
    that is written over, not grown. The server's WAL is reused after its checkpoints; a
    WAL that grows makes each commit's fsync also commit the file's new size: measured on
    a 100k-row copy, 100 rows a transaction, 40,000 rows, 3,160-3,190 rows/s with the WAL
    grown as it went against 3,970-3,980 with it written over in advance (2026-12-05).
    (Per commit, a WAL never checkpointed grows too: 2.7 MB for the 1st, 5.2 MB for the
    40th.) So a dry run on one copy measures the WAL the inserts write; the timed run, on
    a fresh copy, finds a WAL file of zeros WAL_RESERVE_MARGIN times that size (a WAL
    whose header is not valid is an empty one to SQLite, and it writes over it)."""
    now = iso(datetime.now(UTC))
    params = [to_params(batch, now) for batch in batches]
    if rows_per_transaction is not None:
        flat = [row for chunk in params for row in chunk]
        step = max(1, rows_per_transaction)
        params = [flat[i : i + step] for i in range(0, len(flat), step)]
    rows = sum(len(p) for p in params)
    path = workdir / "baseline.sqlite"
    wal = Path(f"{path}-wal")
    durable_copy(template, path)
    conn = _baseline_connection(path)
    for chunk in params:  # the dry run: how much WAL the inserts write
        _insert(conn, chunk)
    written = wal.stat().st_size
    conn.close()
    remove_durably(workdir.glob("baseline.sqlite*"))
    durable_copy(template, path)
    reserve = min(int(written * WAL_RESERVE_MARGIN), shutil.disk_usage(workdir).free // 3)
    write_zeros(wal, reserve)
    reserve = wal.stat().st_size  # whole MiB
    conn = _baseline_connection(path)
    before = conn.execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0]
    started = time.perf_counter()
    for chunk in params:
        _insert(conn, chunk)
    seconds = time.perf_counter() - started
    outgrown = wal.stat().st_size > reserve  # the commits past it paid for the growth
    stored = conn.execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0] - before
    conn.close()
    remove_durably(workdir.glob("baseline.sqlite*"))
    if stored != rows:
        raise RuntimeError(f"baseline stored {stored} of {rows} rows")
    print(
        f"  (the baseline's WAL: {written / 1e6:,.0f} MB, on {reserve / 1e6:,.0f} MB written "
        + ("over in advance; outgrown)" if outgrown else "over in advance)"),
        file=sys.stderr,
    )
    return rows / seconds, rows


def _baseline_connection(path: Path) -> sqlite3.Connection:
    conn = open_db(path, "FULL")
    conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB:d}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


def _insert(conn: sqlite3.Connection, chunk: Sequence[tuple[Any, ...]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_INSERT_SQL, chunk)
    conn.execute("COMMIT")


def write_zeros(path: Path, nbytes: int) -> None:
    """Write (not only allocate) ``nbytes`` of zeros to a new file, and fsync it."""
    block = bytes(1 << 20)
    with path.open("wb") as file:
        for _ in range(math.ceil(nbytes / len(block))):
            file.write(block)
        file.flush()
        os.fsync(file.fileno())


@dataclass
class Verification:
    what: str
    acknowledged: int
    found: int
    patched: int = 0
    patched_final: int = 0

    @property
    def ok(self) -> bool:
        return self.found == self.acknowledged and self.patched_final == self.patched

    def describe(self) -> str:
        text = f"{self.found:,}/{self.acknowledged:,} acknowledged creates stored"
        if self.patched:
            text += f"; {self.patched_final:,}/{self.patched:,} acknowledged PATCHes applied"
        return text


def verify(path: Path, what: str, acked: Sequence[str], patched: Sequence[str]) -> Verification:
    """Look up every acknowledged event_id in the database file (server stopped)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("CREATE TEMP TABLE acked (event_id TEXT PRIMARY KEY)")
        conn.executemany("INSERT OR IGNORE INTO acked VALUES (?)", ((e,) for e in acked))
        found = conn.execute(
            "SELECT COUNT(*) FROM acked JOIN agent_runs USING (event_id)"
        ).fetchone()[0]
        unique_acked = conn.execute("SELECT COUNT(*) FROM acked").fetchone()[0]
        conn.execute("CREATE TEMP TABLE patched (event_id TEXT PRIMARY KEY)")
        conn.executemany("INSERT OR IGNORE INTO patched VALUES (?)", ((e,) for e in patched))
        final = conn.execute(
            "SELECT COUNT(*) FROM patched JOIN agent_runs USING (event_id)"
            " WHERE status = 'success' AND end_time IS NOT NULL"
        ).fetchone()[0]
        unique_patched = conn.execute("SELECT COUNT(*) FROM patched").fetchone()[0]
    finally:
        conn.close()
    if unique_acked != len(acked):
        raise RuntimeError(f"{what}: the server acknowledged the same event_id twice as created")
    return Verification(what, len(acked), int(found), unique_patched, int(final))


def _per_item_us(fn: Callable[[], Any], items: int, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return 1e6 * best / items


def batch_path_costs(batches: Sequence[Sequence[dict[str, Any]]]) -> dict[str, float]:
    """CPU per row of each step the server's batch path runs, in this process (µs/row).

    The same functions the server calls (codec.loads, validate_batch, insert_params),
    on the same rows as the batch scenario; measured so a MISS explains itself.
    """
    from server.contract import codec
    from server.contract.batch import validate_batch

    sample = list(batches[: max(1, min(len(batches), 50))])
    rows = sum(len(batch) for batch in sample)
    bodies = [orjson.dumps(batch) for batch in sample]
    parsed = [codec.loads(body) for body in bodies]
    validated = [validate_batch(batch, RunCreate, max_items=100_000) for batch in parsed]
    now = iso(datetime.now(UTC))
    return {
        "parse JSON": _per_item_us(lambda: [codec.loads(body) for body in bodies], rows),
        "validate (pydantic)": _per_item_us(
            lambda: [validate_batch(batch, RunCreate, max_items=100_000) for batch in parsed],
            rows,
        ),
        "insert_params": _per_item_us(
            lambda: [[insert_params(run, now) for _, run in batch.valid] for batch in validated],
            rows,
        ),
    }


def list_path_costs(path: Path) -> dict[str, float]:
    """CPU of each step of GET /api/v1/runs?agent_name=X&limit=100, in this process (ms/answer).

    The handler's path (query_page_json: rows rendered by SQLite, see run_json) and,
    for comparison, the Python rendering it falls back to (row_to_run, with_urls,
    dumps), on the same database file, one read-only connection.
    """
    from server.contract.codec import dumps
    from server.contract.models import RunQuery
    from server.contract.run_record import with_urls
    from server.storage import runs
    from server.storage.connection import open_reader

    conn = open_reader(path, busy_timeout_ms=2000)
    try:
        queries = [RunQuery(agent_name=agent, limit=100) for agent in AGENT_NAMES]
        statements = [runs.query_sql(query) for query in queries]
        fetched = [conn.execute(sql, params).fetchall() for sql, params in statements]
        decoded = [[runs.row_to_run(row) for row in answer] for answer in fetched]
        n = len(queries)

        def with_urls_all() -> None:
            for answer in decoded:
                for run in answer:
                    with_urls(dict(run))

        return {
            "query_page_json (the handler's path)": _per_item_us(
                lambda: [runs.query_page_json(conn, query) for query in queries], n
            )
            / 1e3,
            "SQL fetch (43 columns)": _per_item_us(
                lambda: [conn.execute(sql, params).fetchall() for sql, params in statements], n
            )
            / 1e3,
            "row_to_run": _per_item_us(
                lambda: [[runs.row_to_run(row) for row in answer] for answer in fetched], n
            )
            / 1e3,
            "with_urls (commit_url, repo_url)": _per_item_us(with_urls_all, n) / 1e3,
            "dumps": _per_item_us(lambda: [dumps(answer) for answer in decoded], n) / 1e3,
        }
    finally:
        conn.close()


# ---- operations (what one worker does per sequence number) ---------------------------


@dataclass
class Health:
    async def __call__(self, client: Client, seq: int) -> None:
        await client.request("GET", "/health", label="health")


@dataclass
class Create:
    rng: random.Random = field(default_factory=random.Random)

    async def __call__(self, client: Client, seq: int) -> None:
        body = run_payload(self.rng, start=datetime.now(UTC))
        status, answer = await client.request("POST", "/api/v1/runs", json=body, label="create")
        if status == 201 and isinstance(answer, dict) and answer.get("status") == "created":
            client.recording.note("acked", body["event_id"])


@dataclass
class Lifecycle:
    """Start (POST) then complete (PATCH), as the guide's lifecycle does."""

    rng: random.Random = field(default_factory=random.Random)

    async def __call__(self, client: Client, seq: int) -> None:
        body = run_payload(self.rng, start=datetime.now(UTC))
        event_id = body["event_id"]
        status, answer = await client.request("POST", "/api/v1/runs", json=body, label="create")
        if not (status == 201 and isinstance(answer, dict) and answer.get("status") == "created"):
            return
        client.recording.note("acked", event_id)
        status, _ = await client.request(
            "PATCH", f"/api/v1/runs/{event_id}", json=finish_payload(self.rng), label="patch"
        )
        if status == 200:
            client.recording.note("patched", event_id)


@dataclass
class LifecycleWithReads:
    """The lifecycle load with reads mixed in: one operation in ``every`` is the guide's
    headline list query (an agent and a status, 100 runs) then ``/metrics``, instead of a
    lifecycle. Whether reads, which run on the event loop, make the writes stall."""

    every: int = 8
    lifecycle: Lifecycle = field(default_factory=Lifecycle)

    async def __call__(self, client: Client, seq: int) -> None:
        if seq % self.every:
            await self.lifecycle(client, seq)
            return
        rng = random.Random(seq)
        params = {
            "agent_name": rng.choice(AGENT_NAMES),
            "status": rng.choice(_STATUSES),
            "limit": "100",
        }
        await client.request("GET", "/api/v1/runs", params=params, label="list")
        await client.request("GET", "/metrics", label="metrics")


@dataclass
class Batch:
    batches: Sequence[Sequence[dict[str, Any]]]

    async def __call__(self, client: Client, seq: int) -> None:
        items = self.batches[seq % len(self.batches)]
        status, answer = await client.request(
            "POST", "/api/v1/runs/batch", json=items, label="batch"
        )
        if status != 200 or not isinstance(answer, dict):
            return
        refused = {error.get("index") for error in answer.get("errors", ())}
        for index, item in enumerate(items):
            if index not in refused:
                client.recording.note("acked", item["event_id"])
        client.recording.note("inserted", answer.get("inserted", 0))


@dataclass
class ListRuns:
    """GET /api/v1/runs with a filter drawn per request (random agent, window ...)."""

    make_params: Callable[[random.Random], dict[str, str]]
    label: str = "list"

    async def __call__(self, client: Client, seq: int) -> None:
        params = self.make_params(random.Random(seq))
        status, answer = await client.request(
            "GET", "/api/v1/runs", params=params, label=self.label
        )
        if status == 200 and isinstance(answer, list):
            client.recording.note("returned", len(answer))


@dataclass
class GetRun:
    event_ids: Sequence[str]

    async def __call__(self, client: Client, seq: int) -> None:
        event_id = self.event_ids[(seq * 7919) % len(self.event_ids)]
        await client.request("GET", f"/api/v1/runs/{event_id}", label="get")


@dataclass
class MetadataCached:
    async def __call__(self, client: Client, seq: int) -> None:
        _, answer = await client.request("GET", "/api/v1/metadata", label="metadata")
        if isinstance(answer, dict):
            client.recording.note("cache_hit", bool(answer.get("cache_hit")))


@dataclass
class MetadataAfterWrite:
    """Create a run with a brand-new agent name, then read the metadata (timed alone)."""

    rng: random.Random = field(default_factory=random.Random)

    async def __call__(self, client: Client, seq: int) -> None:
        agent = f"bench_new.agent_{uuid.uuid4().hex[:12]}"
        body = run_payload(self.rng, start=datetime.now(UTC), agent_name=agent)
        status, answer = await client.request("POST", "/api/v1/runs", json=body, label="write")
        if status == 201 and isinstance(answer, dict) and answer.get("status") == "created":
            client.recording.note("acked", body["event_id"])
        _, meta = await client.request("GET", "/api/v1/metadata", label="metadata")
        if isinstance(meta, dict):
            client.recording.note("cache_hit", bool(meta.get("cache_hit")))
            client.recording.note("saw_new_agent", agent in meta.get("agent_names", ()))


def list_queries(history_end: datetime, rows: int, total: int) -> list[tuple[str, Any]]:
    """The filtered lists measured, each drawing its own parameters per request."""
    span = HISTORY * (rows / total)  # the stored history covers [origin, origin + span]
    origin = history_end - HISTORY

    def window(rng: random.Random, width: timedelta) -> tuple[str, str]:
        offset = rng.random() * max((span - width).total_seconds(), 0)
        low = origin + timedelta(seconds=offset)
        return iso(low), iso(low + width)

    def agent(rng: random.Random) -> dict[str, str]:
        return {"agent_name": rng.choice(AGENT_NAMES), "limit": "100"}

    def job(rng: random.Random) -> dict[str, str]:
        return {"job_type": rng.choice(JOB_TYPES), "limit": "100"}

    def status(rng: random.Random) -> dict[str, str]:
        return {"status": rng.choice(_STATUSES), "limit": "100"}

    def start_1h(rng: random.Random) -> dict[str, str]:
        low, high = window(rng, timedelta(hours=1))
        return {"start_time_from": low, "start_time_to": high, "limit": "100"}

    def start_1d(rng: random.Random) -> dict[str, str]:
        low, high = window(rng, timedelta(days=1))
        return {"start_time_from": low, "start_time_to": high, "limit": "100"}

    def agent_1d(rng: random.Random) -> dict[str, str]:
        low, high = window(rng, timedelta(days=1))
        return {
            "agent_name": rng.choice(AGENT_NAMES),
            "start_time_from": low,
            "start_time_to": high,
            "limit": "100",
        }

    def newest(rng: random.Random) -> dict[str, str]:
        return {"limit": "100"}

    return [
        ("list newest 100 (no filter)", newest),
        ("list agent_name=X", agent),
        ("list job_type=X", job),
        ("list status=X (any status)", status),
        ("list start_time 1 h window", start_1h),
        ("list start_time 1 day window", start_1d),
        ("list agent_name + 1 day window", agent_1d),
    ]


# ---- running scenarios and printing the table ----------------------------------------


@dataclass
class Row:
    scenario: str
    result: str
    p50: float = math.nan
    p99: float = math.nan
    worst: float = math.nan
    failures: str = ""
    server_cpu: float = math.nan
    client_cpu: float = math.nan
    target: str = ""
    verdict: str = ""
    disk_max: float = math.nan  # the fsync probe's worst sample in the same round


@dataclass
class Bench:
    args: argparse.Namespace
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    #: The independent fsync probe (bench/fsync_probe.py) during the write rounds.
    probe: FsyncProbe | None = None
    #: Its worst sample in each round, by the round's name.
    disk: dict[str, ProbeWindow] = field(default_factory=dict)

    def figure(
        self,
        scenario: str,
        metric: str,
        value: float,
        target: float | None,
        *,
        higher_is_better: bool = True,
        rows: int | None = None,
        note: str = "",
    ) -> None:
        """One figure for ``--json`` (bench/report.py) and the closing list."""
        self.figures.append(Figure(scenario, metric, value, target, higher_is_better, rows, note))

    def load(
        self,
        server: ServerProcess,
        op: Any,
        *,
        name: str,
        concurrency: int,
        max_ops: int,
        max_seconds: float,
        warmup: int = 0,
    ) -> tuple[LoadResult, float]:
        """Run one scenario; returns the result and the server's CPU % of one core."""
        if warmup:
            run_load(
                server.base_url,
                op,
                name="warmup",
                concurrency=concurrency,
                max_ops=warmup,
                max_seconds=10,
            )
        profiler = Profiler.start(
            self.args.profile, server.pid, name, gil_only=self.args.profile_gil
        )
        cpu_before = server.cpu_seconds()
        started = time.time()
        result = run_load(
            server.base_url,
            op,
            name=name,
            concurrency=concurrency,
            max_ops=max_ops,
            max_seconds=max_seconds,
            processes=self.args.client_procs,
        )
        server_cpu = 100 * (server.cpu_seconds() - cpu_before) / result.elapsed_s
        if self.probe is not None:
            self.disk[name] = self.probe.window(started, time.time())
        if profiler is not None:
            profiler.stop()
        if self.args.verbose:
            print(result.format(), file=sys.stderr)
        else:
            print(
                f"  {name}: {result.ops_per_s:,.0f} ops/s (client GC:"
                f" {result.recording.gc_collections} collections, longest"
                f" {result.recording.gc_longest_s * 1e3:.1f} ms)",
                file=sys.stderr,
            )
        stats = result.stats()
        if stats.errors or stats.non_2xx:
            self.broken.append(f"{name}: non-2xx {stats.non_2xx}, errors {dict(stats.errors)}")
        return result, server_cpu

    def add(
        self,
        result: LoadResult,
        server_cpu: float,
        *,
        scenario: str,
        rate: str,
        label: str | None = None,
        target: str = "",
        passed: bool | None = None,
    ) -> None:
        stats = result.stats(label)
        p50, p99, worst = stats.quantiles_ms()
        failures = f"{stats.non_2xx}/{sum(stats.errors.values())}"
        verdict = "" if passed is None else ("PASS" if passed else "MISS")
        disk = self.disk.get(result.name)
        if passed is False:
            where = f" (the fsync probe's worst: {disk.describe()})" if disk else ""
            self.missed.append(f"{scenario}: {target}{where}")
        self.rows.append(
            Row(
                scenario,
                rate,
                p50,
                p99,
                worst,
                failures,
                server_cpu,
                result.client_cpu_pct,
                target,
                verdict,
                disk.worst_ms if disk is not None and label is None else math.nan,
            )
        )

    def note_row(self, scenario: str, result: str, target: str = "", passed: bool | None = None):
        verdict = "" if passed is None else ("PASS" if passed else "MISS")
        if passed is False:
            self.missed.append(f"{scenario}: {target}")
        self.rows.append(Row(scenario, result, target=target, verdict=verdict))

    def print_table(self) -> None:
        headers = (
            "scenario",
            "result",
            "p50 ms",
            "p99 ms",
            "max ms",
            "non2xx/err",
            "srv CPU",
            "cli CPU",
            "disk max",
            "target",
            "",
        )

        def num(value: float, fmt: str = "{:.2f}") -> str:
            return "" if math.isnan(value) else fmt.format(value)

        cells = [
            (
                row.scenario,
                row.result,
                num(row.p50),
                num(row.p99),
                num(row.worst, "{:.1f}"),
                row.failures,
                num(row.server_cpu, "{:.0f}%"),
                num(row.client_cpu, "{:.0f}%"),
                num(row.disk_max, "{:.1f}"),
                row.target,
                row.verdict,
            )
            for row in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        right = {2, 3, 4, 5, 6, 7, 8}

        def line(values: Sequence[str]) -> str:
            return " | ".join(
                v.rjust(widths[i]) if i in right else v.ljust(widths[i])
                for i, v in enumerate(values)
            ).rstrip()

        print(line(headers))
        print("-+-".join("-" * w for w in widths))
        for row_cells in cells:
            print(line(row_cells))


def writer_stats(server: ServerProcess) -> tuple[int, int]:
    performance = http_get_json(server.base_url + "/metrics", timeout=30)["performance"]
    return int(performance["write_transactions"]), int(performance["write_operations"])


def group_note(before: tuple[int, int], after: tuple[int, int]) -> str:
    transactions = after[0] - before[0]
    operations = after[1] - before[1]
    if transactions <= 0:
        return ""
    return f", {operations / transactions:.1f} writes/commit"


def server_cpu_ms_per_request(result: LoadResult, server_cpu_pct: float) -> float:
    requests = result.requests_per_s() * result.elapsed_s
    return 10 * server_cpu_pct * result.elapsed_s / requests if requests else math.nan


def write_phase(bench: Bench, workdir: Path, sizes: Sizes) -> None:
    """Prefill ``--rows`` fleet rows once; measure this tree's server on a copy of them (and,
    with ``--compare-root``, the other tree's first, on another copy, same run)."""
    global PREFILL_SCHEMA
    args = bench.args
    template = workdir / "prefill.sqlite"
    if args.compare_root is not None:
        PREFILL_SCHEMA = min(schema_of(args.compare_root), MIGRATIONS[-1].version)
    kept: Path | None = args.prefilled
    if kept is not None and kept.exists():
        print(f"reusing the prefilled {kept} ...", file=sys.stderr)
        started = time.monotonic()
        shutil.copyfile(kept, template)
        seconds = time.monotonic() - started
    else:
        print(f"prefilling {args.rows:,} fleet rows ...", file=sys.stderr)
        seconds = prefill_fleet(template, args.rows, datetime.now(UTC) - timedelta(hours=1))
        if kept is not None:
            shutil.copyfile(template, kept)
    size_mb = template.stat().st_size / 1e6
    bench.note_row(
        f"setup: {args.rows:,} fleet rows prefilled",
        f"{size_mb:,.0f} MB in {seconds:.0f} s (2,000 agents Zipf, 85/8/3% statuses)",
    )
    trees: list[tuple[str, Path | None]] = []
    if args.compare_root is not None:
        trees.append(("before", args.compare_root))
    trees.append(("", None))
    # The ceiling's copy now, flushed (see ``durable_copy``).
    ceiling_db = workdir / "ceiling.sqlite"
    durable_copy(template, ceiling_db)
    measured: ServerWrites | None = None
    rounds: list[BatchRound] = []
    with FsyncProbe(workdir, enabled=not args.no_disk_probe) as bench.probe:
        for label, root in trees:
            batch_round, measured = measure_writes(bench, workdir, sizes, template, label, root)
            if batch_round is not None:
                rounds.append(batch_round)
        if measured is not None:
            measure_ceiling(bench, workdir, ceiling_db, measured, sizes)
    bench.probe = None
    # Last: the baselines write a few hundred MB (their WAL, then its checkpoint at close),
    # whose write-back put 80-105 ms maxima into the lifecycle round that followed them.
    batch_figures(bench, workdir, template, rounds)


@dataclass(frozen=True)
class BatchRound:
    """One server's batch round, kept until its baselines are measured."""

    tag: str
    label: str
    result: LoadResult
    cpu: float
    rate: float  # acknowledged rows/s
    complete: bool
    rows_per_commit: int  # what the server's group commits held
    batches: list[list[dict[str, Any]]]


def batch_figures(bench: Bench, workdir: Path, template: Path, rounds: list[BatchRound]) -> None:
    """Each batch round against raw ``executemany`` of the same rows into a copy of the same
    prefill: 100 rows a transaction (one batch), and, the target's, as many rows a
    transaction as the server's group commits held (the per-batch one pays an fsync per
    100 rows, the server fewer)."""
    if not rounds:
        return
    args = bench.args
    rows = args.rows
    batches = rounds[-1].batches
    print("  baseline: raw executemany of the same rows ...", file=sys.stderr)
    baseline, _ = executemany_rate(template, workdir, batches)
    for batch_round in rounds:
        share = 100 * batch_round.rate / baseline
        grouped_share: float | None = None
        grouped = math.nan
        per_commit = batch_round.rows_per_commit
        if not batch_round.label and per_commit:
            print(f"  baseline: {per_commit} rows/transaction ...", file=sys.stderr)
            grouped, _ = executemany_rate(template, workdir, batches, per_commit)
            grouped_share = 100 * batch_round.rate / grouped
        judged = share if grouped_share is None else grouped_share
        mine = not batch_round.label
        bench.add(
            batch_round.result,
            batch_round.cpu,
            scenario=f"(3) batches of {args.batch_size} c={args.batch_concurrency}{batch_round.tag}",
            rate=f"{batch_round.rate:,.0f} runs/s = {share:.0f}% of (4)"
            + ("" if grouped_share is None else f", {grouped_share:.0f}% of (4g)")
            + ("" if batch_round.complete else " [time bound hit]"),
            target=">= 80% of (4g)" if mine else "",
            passed=judged >= 80 and batch_round.complete if mine else None,
        )
        scenario = f"server batch ingest, batches of {args.batch_size} c={args.batch_concurrency}"
        bench.figure(
            f"{scenario}{batch_round.tag}",
            "% of raw executemany, 100 rows/tx",
            share,
            target=None,
            rows=rows,
            note=f"{batch_round.rate:,.0f} vs {baseline:,.0f} rows/s",
        )
        if grouped_share is not None:
            bench.figure(
                scenario,
                "% of raw executemany at its rows/commit",
                grouped_share,
                80.0,
                rows=rows,
                note=f"{batch_round.rate:,.0f} vs {grouped:,.0f} rows/s, {per_commit} rows a "
                "transaction, as the server's group commits held",
            )
            bench.note_row(
                f"(4g) raw executemany, {per_commit} rows/tx, same prefill",
                f"{grouped:,.0f} rows/s (the rows per commit of (3))",
            )
    bench.note_row(
        f"(4) raw executemany, {args.batch_size} rows/tx, same prefill",
        f"{baseline:,.0f} rows/s (WAL, sync=FULL)",
    )
    costs = batch_path_costs(batches)
    bench.notes.append(
        "batch path CPU per row, in-process, same rows (server functions): "
        + ", ".join(f"{step} {us:.1f} us" for step, us in costs.items())
        + f"; raw executemany+commit takes {1e6 / baseline:.1f} us of wall time per row"
    )


@dataclass(frozen=True)
class ServerWrites:
    """This tree's server's creates and lifecycle rounds, for the ceiling's ratios, and the
    batch rows it stored before them (the ceiling's copy gets them too)."""

    creates: LoadResult
    lifecycle: LoadResult
    batch_rows: list[list[dict[str, Any]]]


def add_batch_rows(path: Path, batches: Sequence[Sequence[dict[str, Any]]]) -> int:
    """The rows the server's batch rounds stored, into the ceiling's copy (one transaction
    per batch, checkpointed and flushed before it is measured): both then take their
    creates on a table of the same size. Returns the rows added."""
    now = iso(datetime.now(UTC))
    conn = open_db(path, "FULL")
    added = 0
    try:
        for batch in batches:
            params = to_params(batch, now)
            if not params:
                continue
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT_SQL, params)
            conn.execute("COMMIT")
            added += len(params)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    durable_copy_flush(path)
    return added


def creates_round(
    bench: Bench, server: ServerProcess, name: str, sizes: Sizes
) -> tuple[LoadResult, float]:
    """Single creates at c=32 (up to ``sizes.creates`` or 30 s), after 300 unmeasured."""
    return bench.load(
        server,
        Create(),
        name=name,
        concurrency=32,
        max_ops=sizes.creates,
        max_seconds=30,
        warmup=300,
    )


def lifecycle_round(bench: Bench, server: ServerProcess, name: str) -> tuple[LoadResult, float]:
    """The "no stalls" round: create+PATCH lifecycles at c=32 for ``--seconds``."""
    return bench.load(
        server,
        Lifecycle(),
        name=name,
        concurrency=32,
        max_ops=10_000_000,
        max_seconds=bench.args.seconds,
        warmup=100,
    )


def lifecycle_figures(
    bench: Bench,
    scenario: str,
    result: LoadResult,
    cpu: float,
    *,
    targets: tuple[float | None, float | None],
) -> None:
    """A lifecycle round's figures: ops/s, p99 and max (with their targets), CPU."""
    _, p99, worst = result.stats().quantiles_ms()
    rows = bench.args.rows
    bench.figure(scenario, "ops/s", result.requests_per_s(), None, rows=rows)
    bench.figure(scenario, "p99 ms", p99, targets[0], higher_is_better=False, rows=rows)
    bench.figure(scenario, "max ms", worst, targets[1], higher_is_better=False, rows=rows)
    disk = bench.disk.get(result.name)
    if disk is not None and disk.samples:
        bench.figure(
            scenario,
            "disk fsync max ms",
            disk.worst_ms,
            None,
            higher_is_better=False,
            rows=rows,
            note="an independent 4 KiB fdatasync every 20 ms, same round (bench/fsync_probe.py)",
        )
    bench.figure(
        scenario,
        "server CPU ms/request",
        server_cpu_ms_per_request(result, cpu),
        None,
        higher_is_better=False,
        rows=rows,
    )


def add_parts(bench: Bench, result: LoadResult, parts: Sequence[str]) -> None:
    """One table row per kind of request of a round (its label)."""
    for part in parts:
        bench.add(
            result,
            math.nan,
            scenario=f"      {part} requests",
            label=part,
            rate=f"{result.requests_per_s(part):,.0f} req/s",
        )


def mixed_figures(bench: Bench, result: LoadResult, cpu: float) -> None:
    """The writes' p99 and max with reads mixed in (no target: the "no stalls" targets are
    the lifecycle round's), and the reads' own."""
    writes = LabelStats()
    writes.merge(result.stats("create"))
    writes.merge(result.stats("patch"))
    scenario = "server lifecycle c=32 with 1 op in 8 a list + /metrics, 30 s"
    _, p99, worst = writes.quantiles_ms()
    rows = bench.args.rows
    bench.add(
        result,
        cpu,
        scenario="(2r) lifecycle c=32, 1 op in 8 reads",
        rate=f"{result.ops_per_s:,.0f} ops/s, {result.requests_per_s():,.0f} req/s",
    )
    add_parts(bench, result, ("create", "patch", "list", "metrics"))
    bench.figure(scenario, "writes p99 ms", p99, None, higher_is_better=False, rows=rows)
    bench.figure(scenario, "writes max ms", worst, None, higher_is_better=False, rows=rows)
    for part in ("list", "metrics"):
        _, part_p99, part_max = result.stats(part).quantiles_ms()
        bench.figure(scenario, f"{part} p99 ms", part_p99, None, higher_is_better=False, rows=rows)
        bench.figure(scenario, f"{part} max ms", part_max, None, higher_is_better=False, rows=rows)


def durable_copy(source: Path, target: Path) -> None:
    """Copy a file and fsync the copy, so its write-back is over before it is measured.

    Every copy a round runs next to is made this way. The kernel writes a dirty file back
    ~30 s after it was first dirtied (``vm.dirty_expire_centisecs``), or at the next fsync
    of it: the baseline's 1M-row copy (~1 GB), left dirty just before the creates round,
    was written back in the middle of the lifecycle round under the server's WAL fsyncs.
    With the server's checkpoints switched off (to isolate it), that round's max was
    237 ms with the copies left dirty and 54 ms with them flushed first."""
    shutil.copyfile(source, target)
    durable_copy_flush(target)


def durable_copy_flush(path: Path) -> None:
    """fsync a file, so its write-back is over before a round runs next to it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_durably(paths: Iterable[Path]) -> None:
    """Delete a round's files and sync, so freeing their blocks (journal commits and, on a
    disk mounted with ``discard``, the discards) is done before the next round starts."""
    for path in paths:
        path.unlink(missing_ok=True)
    os.sync()


def measure_ceiling(
    bench: Bench, workdir: Path, db: Path, server: ServerWrites, sizes: Sizes
) -> None:
    """The same creates, then the same lifecycle load, against bench/server_ceiling.py on
    ``db``, a copy of the same prefill given the server's batch rows: the least a server
    does for these requests on this schema and table, same run. A target the ceiling
    misses too is this machine's, not the code's."""
    args = bench.args
    added = add_batch_rows(db, server.batch_rows)
    print(f"ceiling copy: the server's {added:,} batch rows added", file=sys.stderr)
    ceiling = ServerProcess(
        db,
        workdir / "server-ceiling.log",
        args.server_log_level,
        command=[sys.executable, str(Path(__file__).resolve().with_name("server_ceiling.py"))],
    )
    try:
        ceiling.start()
        print(f"ceiling pid {ceiling.pid} at {ceiling.base_url}", file=sys.stderr)
        created, created_cpu = creates_round(bench, ceiling, "ceiling creates c=32", sizes)
        result, cpu = lifecycle_round(bench, ceiling, f"ceiling lifecycle c=32 {args.seconds:g} s")
    finally:
        code = ceiling.stop()
        print(f"ceiling stopped, exit code {code}", file=sys.stderr)
    rows = args.rows
    ceiling_rate = created.requests_per_s("create")
    server_rate = server.creates.requests_per_s("create")
    bench.add(
        created,
        created_cpu,
        scenario="(1c) ceiling of (1): single creates c=32",
        label="create",
        rate=f"{ceiling_rate:,.0f} runs/s; (1) made {server_rate / ceiling_rate:.0%} of it"
        if ceiling_rate
        else "no creates answered",
    )
    scenario = "ceiling (aiohttp+validation+same SQLite writes) creates c=32"
    bench.figure(scenario, "creates/s", ceiling_rate, None, rows=rows)
    bench.figure(
        scenario,
        "server CPU ms/create",
        server_cpu_ms_per_request(created, created_cpu),
        None,
        higher_is_better=False,
        rows=rows,
    )
    bench.figure(
        "server creates / the ceiling's, same run",
        "x",
        server_rate / ceiling_rate if ceiling_rate else math.nan,
        None,
        rows=rows,
    )
    _, p99, worst = result.stats().quantiles_ms()
    _, server_p99, server_max = server.lifecycle.stats().quantiles_ms()
    bench.add(
        result,
        cpu,
        scenario="(2c) ceiling of (2): create+PATCH c=32",
        rate=f"{result.ops_per_s:,.0f} runs/s, {result.requests_per_s():,.0f} req/s",
    )
    scenario = f"ceiling (aiohttp+validation+same SQLite writes) lifecycle c=32, {args.seconds:g} s"
    lifecycle_figures(bench, scenario, result, cpu, targets=(None, None))
    for metric, ours, theirs in (("p99", server_p99, p99), ("max", server_max, worst)):
        bench.figure(
            f"server lifecycle {metric} / the ceiling's, same run",
            "x",
            ours / theirs if theirs else math.nan,
            None,
            higher_is_better=False,
            rows=rows,
        )
    check = verify(
        db,
        "ceiling",
        created.recording.notes.get("acked", []) + result.recording.notes.get("acked", []),
        result.recording.notes.get("patched", []),
    )
    bench.note_row(
        "verify: the ceiling's acknowledged writes stored",
        check.describe(),
        target="all",
        passed=check.ok,
    )
    if not check.ok:
        bench.broken.append(f"ceiling verification: {check.describe()}")
        bench.unverified.append(check.describe())
    remove_durably([db, *workdir.glob(f"{db.name}-*")])


def measure_writes(
    bench: Bench,
    workdir: Path,
    sizes: Sizes,
    template: Path,
    label: str,
    root: Path | None,
) -> tuple[BatchRound | None, ServerWrites | None]:
    """One server (code from ``root``, else this tree) on a copy of the prefilled file:
    batches, creates, lifecycle (and, for this tree, lifecycle with reads). Returns the
    batch round (its baselines are measured after every timed round: ``batch_figures``)
    and the creates and lifecycle rounds (if they ran)."""
    args = bench.args
    rows = args.rows
    tag = f" [{label}: {root}]" if label else ""
    db = workdir / f"writes{'-' + label if label else ''}.sqlite"
    durable_copy(template, db)
    server = ServerProcess(
        db,
        workdir / f"server-writes{'-' + label if label else ''}.log",
        args.server_log_level,
        root,
    )
    acked: list[str] = []
    patched: list[str] = []
    batch_rows: list[list[dict[str, Any]]] = []
    batch_round: BatchRound | None = None
    creates: LoadResult | None = None
    lifecycle: LoadResult | None = None
    try:
        server.start()
        print(f"server (writes{tag}) pid {server.pid} at {server.base_url}", file=sys.stderr)

        rng = random.Random(1234)
        now = datetime.now(UTC)
        batches = [
            [
                run_payload(rng, start=now, status=_STATUSES[i % len(_STATUSES)])
                for i in range(args.batch_size)
            ]
            for _ in range(sizes.batches)
        ]
        warm = [[run_payload(rng, start=now) for _ in range(args.batch_size)] for _ in range(10)]
        bench.load(
            server, Batch(warm), name="batch warmup", concurrency=2, max_ops=10, max_seconds=30
        )
        acked += [item["event_id"] for batch in warm for item in batch]
        before = writer_stats(server)
        result, cpu = bench.load(
            server,
            Batch(batches),
            name=f"batches of {args.batch_size}{tag}",
            concurrency=args.batch_concurrency,
            max_ops=len(batches),
            max_seconds=60,
        )
        after = writer_stats(server)
        batch_acked = result.recording.notes.get("acked", [])
        acked += batch_acked
        stored = set(acked)
        batch_rows = [
            [run for run in batch if run["event_id"] in stored] for batch in warm + batches
        ]
        commits, operations = after[0] - before[0], after[1] - before[1]
        batch_round = BatchRound(
            tag=tag,
            label=label,
            result=result,
            cpu=cpu,
            rate=len(batch_acked) / result.elapsed_s,
            complete=result.recording.ops_done == len(batches),
            rows_per_commit=round(args.batch_size * operations / commits) if commits > 0 else 0,
            batches=batches,
        )

        before = writer_stats(server)
        result, cpu = creates_round(bench, server, f"creates c=32{tag}", sizes)
        creates = result
        after = writer_stats(server)
        acked += result.recording.notes.get("acked", [])
        rate = result.requests_per_s("create")
        bench.add(
            result,
            cpu,
            scenario=f"(1) single creates c=32{tag}",
            label="create",
            rate=f"{rate:,.0f} runs/s{group_note(before, after)}",
            target="" if label else ">= 3,000 runs/s",
            passed=None if label else rate >= 3000,
        )
        bench.figure(
            f"server creates c=32{tag}", "creates/s", rate, None if label else 3000.0, rows=rows
        )
        bench.figure(
            f"server creates c=32{tag}",
            "server CPU ms/create",
            server_cpu_ms_per_request(result, cpu),
            None,
            higher_is_better=False,
            rows=rows,
        )

        before = writer_stats(server)
        result, cpu = lifecycle_round(bench, server, f"lifecycle c=32 {args.seconds:g} s{tag}")
        after = writer_stats(server)
        lifecycle = result
        acked += result.recording.notes.get("acked", [])
        patched += result.recording.notes.get("patched", [])
        _, p99, worst = result.stats().quantiles_ms()
        scenario = f"server create+PATCH lifecycle c=32, {args.seconds:g} s{tag}"
        bench.add(
            result,
            cpu,
            scenario=f"(2) lifecycle create+PATCH c=32{tag}",
            rate=f"{result.ops_per_s:,.0f} runs/s, {result.requests_per_s():,.0f} req/s"
            f"{group_note(before, after)}",
            target="" if label else "p99 <= 25 ms, max <= 100 ms",
            passed=None if label else p99 <= 25 and worst <= 100,
        )
        add_parts(bench, result, ("create", "patch"))
        lifecycle_figures(
            bench, scenario, result, cpu, targets=(None, None) if label else (25.0, 100.0)
        )
        if not label:
            mixed, mixed_cpu = bench.load(
                server,
                LifecycleWithReads(),
                name="lifecycle c=32 with reads, 30 s",
                concurrency=32,
                max_ops=10_000_000,
                max_seconds=30,
            )
            acked += mixed.recording.notes.get("acked", [])
            patched += mixed.recording.notes.get("patched", [])
            mixed_figures(bench, mixed, mixed_cpu)
    finally:
        code = server.stop()
        print(f"server (writes{tag}) stopped, exit code {code}", file=sys.stderr)
    check = verify(db, f"writes{tag}", acked, patched)
    bench.note_row(
        f"verify: acknowledged writes stored{tag}", check.describe(), target="all", passed=check.ok
    )
    if not check.ok:
        bench.broken.append(f"verification: {check.describe()}")
        bench.unverified.append(check.describe())
    remove_durably([db, *workdir.glob(f"{db.name}-*")])
    if creates is None or lifecycle is None:
        return batch_round, None
    return batch_round, ServerWrites(creates, lifecycle, batch_rows)


def read_measurements(
    bench: Bench,
    server: ServerProcess,
    rows: int,
    sample: Sequence[str],
    history_end: datetime,
    sizes: Sizes,
) -> None:
    args = bench.args
    tag = f"{rows:,} rows"
    for name, make in list_queries(history_end, rows, args.rows_large):
        for concurrency in args.read_concurrency:
            result, cpu = bench.load(
                server,
                ListRuns(make),
                name=f"{name} c={concurrency} @ {tag}",
                concurrency=concurrency,
                max_ops=sizes.reads,
                max_seconds=args.read_seconds,
                warmup=50,
            )
            returned = result.recording.notes.get("returned", [])
            mean = sum(returned) / len(returned) if returned else 0
            p99 = result.stats().quantiles_ms()[1]
            bench.add(
                result,
                cpu,
                scenario=f"(5) {name} c={concurrency} @ {tag}",
                rate=f"{result.requests_per_s():,.0f} req/s, {mean:.0f} runs/answer",
                target="p99 <= 20 ms",
                passed=p99 <= 20,
            )
    for concurrency in args.read_concurrency:
        result, cpu = bench.load(
            server,
            GetRun(sample),
            name=f"single GET c={concurrency} @ {tag}",
            concurrency=concurrency,
            max_ops=sizes.gets,
            max_seconds=args.read_seconds,
            warmup=100,
        )
        p99 = result.stats().quantiles_ms()[1]
        bench.add(
            result,
            cpu,
            scenario=f"(5) single GET /runs/{{id}} c={concurrency} @ {tag}",
            rate=f"{result.requests_per_s():,.0f} req/s",
            target="p99 <= 5 ms",
            passed=p99 <= 5,
        )


def read_phase(bench: Bench, workdir: Path, sizes: Sizes) -> None:
    args = bench.args
    db = workdir / "reads.sqlite"
    history_end = datetime.now(UTC) - timedelta(hours=1)
    acked: list[str] = []
    sample: list[str] = []
    loaded = 0
    for rows in (args.rows_small, args.rows_large):
        print(f"pre-loading {rows:,} rows into {db.name} ...", file=sys.stderr)
        more, seconds = preload(db, loaded, rows - loaded, args.rows_large, history_end)
        sample += more
        loaded = rows
        size_mb = sum(p.stat().st_size for p in workdir.glob("reads.sqlite*")) / 1e6
        server = ServerProcess(db, workdir / "server-reads.log", args.server_log_level)
        try:
            server.start()
            print(
                f"server (reads, {rows:,} rows) pid {server.pid}, up in {server.startup_s:.1f} s",
                file=sys.stderr,
            )
            bench.note_row(
                f"setup: {rows:,} rows pre-loaded",
                f"{size_mb:,.0f} MB; load {seconds:.0f} s; server up in {server.startup_s:.1f} s",
            )
            read_measurements(bench, server, rows, sample, history_end, sizes)
            if rows == args.rows_large:
                tag = f"{rows:,} rows"
                result, cpu = bench.load(
                    server,
                    MetadataCached(),
                    name="metadata cached",
                    concurrency=max(args.read_concurrency),
                    max_ops=sizes.metadata,
                    max_seconds=args.read_seconds,
                    warmup=10,
                )
                hits = result.recording.notes.get("cache_hit", [])
                p99 = result.stats().quantiles_ms()[1]
                bench.add(
                    result,
                    cpu,
                    scenario=f"(6) metadata, cached c={max(args.read_concurrency)} @ {tag}",
                    rate=f"{result.requests_per_s():,.0f} req/s, {sum(hits)}/{len(hits)} hits",
                    target="p99 <= 5 ms",
                    passed=p99 <= 5,
                )
                result, cpu = bench.load(
                    server,
                    MetadataAfterWrite(),
                    name="metadata after write",
                    concurrency=1,
                    max_ops=sizes.metadata_writes,
                    max_seconds=args.read_seconds,
                )
                acked += result.recording.notes.get("acked", [])
                hits = result.recording.notes.get("cache_hit", [])
                fresh = result.recording.notes.get("saw_new_agent", [])
                p99 = result.stats("metadata").quantiles_ms()[1]
                bench.add(
                    result,
                    cpu,
                    scenario=f"(6) metadata right after new agent c=1 @ {tag}",
                    label="metadata",
                    rate=f"{len(hits) - sum(hits)}/{len(hits)} recomputed,"
                    f" {sum(fresh)}/{len(fresh)} saw the new agent",
                    target="p99 <= 5 ms",
                    passed=p99 <= 5 and all(fresh),
                )
                bench.add(
                    result,
                    math.nan,
                    scenario="      (the writes between reads)",
                    label="write",
                    rate="create with a new agent_name, c=1",
                )
        finally:
            code = server.stop()
            print(f"server (reads) stopped, exit code {code}", file=sys.stderr)
    costs = list_path_costs(db)
    bench.notes.append(
        f"list handler CPU per 100-run answer at {args.rows_large:,} rows (agent_name=X,"
        " in-process, server functions): "
        + ", ".join(f"{step} {ms:.2f} ms" for step, ms in costs.items())
        + f" = {sum(costs.values()):.2f} ms"
    )
    check = verify(db, "metadata writes", acked, [])
    bench.note_row(
        "verify: metadata-phase writes stored", check.describe(), target="all", passed=check.ok
    )
    if not check.ok:
        bench.broken.append(f"verification: {check.describe()}")
        bench.unverified.append(check.describe())


@dataclass(frozen=True)
class Sizes:
    health: int
    creates: int
    lifecycles: int  # unused: the lifecycle scenario runs for --seconds
    batches: int
    reads: int
    gets: int
    metadata: int
    metadata_writes: int


FULL = Sizes(20_000, 40_000, 0, 400, 2_000, 5_000, 5_000, 500)
QUICK = Sizes(2_000, 3_000, 0, 30, 200, 400, 400, 50)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the real telemetry-server over HTTP (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run < 60 s")
    parser.add_argument(
        "--rows",
        type=int,
        help="fleet rows prefilled before the write scenarios (default 100,000; 10,000 quick)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="duration of the create+PATCH lifecycle scenario (default 60; 10 quick)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="write the figures there (bench/report.py)"
    )
    parser.add_argument(
        "--compare-root",
        type=Path,
        metavar="DIR",
        help="also measure the server of another source tree (e.g. a `git worktree` of the"
        " base commit) on the same prefill, before this one, in the same run",
    )
    parser.add_argument(
        "--reads",
        action="store_true",
        help="also run the read phases (bench/list_cpu.py and bench/ops_reads.py cover them)",
    )
    parser.add_argument("--rows-small", type=int, help="first read phase (default 100,000)")
    parser.add_argument("--rows-large", type=int, help="second read phase (default 1,000,000)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument(
        "--read-concurrency",
        default="1,4",
        help="comma-separated concurrencies for the read scenarios (default 1,4)",
    )
    parser.add_argument("--read-seconds", type=float, default=20.0, help="bound per read scenario")
    parser.add_argument(
        "--client-procs", type=int, default=1, help="load generator processes (default 1)"
    )
    parser.add_argument(
        "--server-log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="TELEMETRY_LOG_LEVEL of the server (default INFO, its own default)",
    )
    parser.add_argument("--skip-writes", action="store_true", help="read phases only")
    parser.add_argument("--skip-reads", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-disk-probe",
        action="store_true",
        help="no independent fsync probe beside the rounds (bench/fsync_probe.py; it adds"
        " 50 small fsyncs a second)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs)")
    parser.add_argument(
        "--prefilled",
        type=Path,
        metavar="FILE",
        help="the prefill to reuse (copied; its history ends when it was made), or, if absent,"
        " where to keep this run's for the next (a 1M prefill takes minutes)",
    )
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record each scenario with py-spy into DIR (slows the server; for diagnosis)",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (Python's CPU per frame)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print each load's details")
    args = parser.parse_args(argv)
    if args.rows_small is None:
        args.rows_small = 10_000 if args.quick else 100_000
    if args.rows_large is None:
        args.rows_large = 50_000 if args.quick else 1_000_000
    if args.rows is None:
        args.rows = 10_000 if args.quick else 100_000
    if args.seconds is None:
        args.seconds = 10.0 if args.quick else 60.0
    if args.rows < 1 or args.seconds <= 0:
        parser.error("need --rows >= 1 and --seconds > 0")
    if args.compare_root is not None and not (args.compare_root / "server").is_dir():
        parser.error(f"--compare-root {args.compare_root}: no server/ package there")
    args.read_concurrency = [int(c) for c in str(args.read_concurrency).split(",") if c]
    if not 0 < args.rows_small <= args.rows_large:
        parser.error("need 0 < --rows-small <= --rows-large")
    return args


def main(argv: list[str] | None = None) -> int:
    # The stale-run reaper off: the fleet prefill's old `running` runs (3%) would be reaped
    # during the measurement, a one-time upgrade cost (bench/stale_bench.py measures it),
    # not the steady state, where a reaper pass with nothing due is one indexed read.
    os.environ.setdefault("TELEMETRY_STALE_AFTER_S", "0")
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    bench = Bench(args)
    workdir = Path(tempfile.mkdtemp(prefix="telemetry-bench-", dir=args.workdir))

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    start_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    if os.getloadavg()[0] > 0.5:
        print(f"warning: the machine is busy (load average {start_load})", file=sys.stderr)
    client = (
        f"load generator: bench/loadgen.py, {args.client_procs} client process(es) separate"
        f" from the server, {event_loop_name()} event loop"
    )
    print(client, file=sys.stderr)
    try:
        if not args.skip_writes:
            write_phase(bench, workdir, sizes)
        if args.reads and not args.skip_reads:
            read_phase(bench, workdir, sizes)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        bench.broken.append(f"run failed: {exc!r}")
    finally:
        for log in sorted(workdir.glob("server-*.log")):
            text = log.read_text(errors="replace")
            if '"level":"error"' in text or "Traceback" in text:
                bench.broken.append(f"{log.name} has errors:\n{tail(log)}")
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"telemetry-server benchmark ({'quick' if args.quick else 'full'}),"
        f" {os.cpu_count()} CPUs, sqlite {sqlite3.sqlite_version},"
        f" server log level {args.server_log_level}"
    )
    print(client + "; CPU columns are % of one core over the scenario")
    if args.profile:
        print(f"py-spy profiles of each scenario in {args.profile} (they slow the server)")
    print(
        f"reads at concurrency {'/'.join(map(str, args.read_concurrency))}; batches at concurrency"
        f" {args.batch_concurrency}; p50/p99/max are per request, client-side; disk max is"
        " the worst 4 KiB fdatasync of an independent probe in the same round"
        " (bench/fsync_probe.py): the disk's own stalls"
    )
    print()
    bench.print_table()
    print()
    for note in bench.notes:
        print(f"note: {note}")
    end_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at start {start_load}, at end {end_load} (1/5/15 min)")
    print(f"total time {time.monotonic() - started:.0f} s")
    if bench.figures:
        print()
        for figure in bench.figures:
            print(format_row(figure))
    if args.json is not None:
        write_json(args.json, bench.figures, verified=not bench.unverified and not bench.broken)
        print(f"figures written to {args.json}")
    for problem in bench.broken:
        print(f"PROBLEM: {problem}")
    for miss in bench.missed:
        print(f"MISS: {miss}")
    if bench.broken:
        return 2
    return 1 if bench.missed else 0


if __name__ == "__main__":
    sys.exit(main())
