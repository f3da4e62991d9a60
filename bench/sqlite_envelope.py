"""The SQLite server's envelope, for the README's "when to switch to PostgreSQL": what one
``telemetry-server`` on one SQLite file takes, how big the file gets, how long a restore
takes. Real server, real HTTP on 127.0.0.1, real backup command.

    python bench/sqlite_envelope.py                  # 1,000,000 rows
    python bench/sqlite_envelope.py --rows 10000000  # the longer run
    python bench/sqlite_envelope.py --quick          # smoke run, tiny sizes

Printed:

- size: rows, file bytes (after a checkpoint: the WAL is empty) and bytes per run of a
  fleet-shaped prefill (bench/server_bench.py's ``prefill_fleet``: 2,000 agents, 20 job
  types, 85% success / 8% failure / 3% running, realistic optional fields);
- ingest: ``POST /api/v1/runs/batch`` (100 runs a request, concurrency 6) and the
  create+PATCH lifecycle (concurrency 32) on that file, as runs/s and runs/day
  (runs/s x 86,400: the rate held over the measured window, no headroom taken off), and
  the server's CPU per run (less at the mercy of other load than the wall-clock rate; its
  inverse is a ceiling for a server with a core of its own);
- backup: ``telemetry-server backup`` of the file while the server runs (seconds, bytes);
- restore: copy the backup into place (with an fsync), start ``telemetry-server`` on it,
  and time the first answers (``/health``, then a first page of ``GET /api/v1/runs``).

Wall clock on a shared 2-core machine: noisy; quote it as an order of magnitude. The
server is stopped by its PID at the end, also on failure. Exit status 2 when a request
failed or a step broke, else 0 (there is no target here, only figures).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import LoadResult, run_load
from pg_replicas_vs_sqlite import BATCH_CONCURRENCY, LIFECYCLE_CONCURRENCY, new_batches
from server_bench import Batch, Lifecycle, ServerProcess, prefill_fleet, tail

DAY_S = 86_400


def file_bytes(path: Path) -> int:
    """The database and whatever WAL and shared-memory files it has."""
    return sum(
        candidate.stat().st_size
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        if candidate.exists()
    )


def count_runs(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM agent_runs").fetchone()[0])
    finally:
        conn.close()


def server_command() -> list[str]:
    executable = Path(sys.executable).with_name("telemetry-server")
    return [str(executable)] if executable.exists() else [sys.executable, "-m", "server"]


def backup(db: Path, destination: Path) -> float:
    """``telemetry-server backup DEST`` (online, while the server runs); seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env.pop("DATABASE_URL", None)
    started = time.monotonic()
    done = subprocess.run(
        [*server_command(), "backup", str(destination), "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"backup failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.monotonic() - started


def copy_durably(source: Path, target: Path) -> float:
    """A restore's copy: the file, then fsync of it and of its directory; seconds."""
    started = time.monotonic()
    shutil.copyfile(source, target)
    with target.open("rb+") as handle:
        os.fsync(handle.fileno())
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return time.monotonic() - started


def first_list(base_url: str) -> tuple[float, int]:
    """The first page of runs from a just-started server: (ms, runs on it)."""
    started = time.perf_counter()
    with urllib.request.urlopen(base_url + "/api/v1/runs?limit=100", timeout=60) as response:
        body = orjson.loads(response.read())
    return (time.perf_counter() - started) * 1000, len(body)


def ok(result: LoadResult) -> bool:
    stats = result.stats()
    return not stats.non_2xx and not stats.errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="default 1,000,000 (--quick 3,000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--batches", type=int, default=600, help="batches of 100 new runs")
    parser.add_argument("--seconds", type=float, default=30.0, help="lifecycle duration")
    parser.add_argument("--server-log-level", default="WARNING")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    args = parser.parse_args(argv)
    rows = args.rows or (3000 if args.quick else 1_000_000)
    batches = 6 if args.quick else args.batches
    seconds = 2.0 if args.quick else args.seconds
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="envelope-")))
        return run(workdir, rows, batches, seconds, args.server_log_level)


def run(workdir: Path, rows: int, batches: int, seconds: float, log_level: str) -> int:
    db = workdir / "fleet.sqlite"
    db.unlink(missing_ok=True)
    prefill_s = prefill_fleet(db, rows, datetime.now(UTC) - timedelta(hours=1))
    stored = count_runs(db)
    size = file_bytes(db)
    lines = [
        f"SQLite envelope, one telemetry-server; wall clock on a shared 2-core machine"
        f" (prefill of {stored:,} rows took {prefill_s:.0f} s)",
        f"size:      {stored:,} runs in {size / 2**20:,.0f} MiB = {size / stored:,.0f} bytes/run",
    ]
    server = ServerProcess(db, workdir / "server.log", log_level)
    restored = ServerProcess(workdir / "restored.sqlite", workdir / "restored.log", log_level)
    try:
        server.start()
        cpu_start = server.cpu_seconds()
        ingest = run_load(
            server.base_url,
            Batch(new_batches(batches)),
            name="batch ingest",
            concurrency=BATCH_CONCURRENCY,
            max_ops=batches,
            max_seconds=600,
        )
        inserted = sum(ingest.recording.notes.get("inserted", []))
        batch_rate = inserted / ingest.elapsed_s
        cpu_ingest = server.cpu_seconds()
        batch_cpu_ms = 1000 * (cpu_ingest - cpu_start) / max(inserted, 1)
        life = run_load(
            server.base_url,
            Lifecycle(random.Random(3)),
            name="lifecycle",
            concurrency=LIFECYCLE_CONCURRENCY,
            max_ops=10_000_000,
            max_seconds=seconds,
        )
        patched = len(life.recording.notes.get("patched", []))
        life_rate = patched / life.elapsed_s
        life_cpu_ms = 1000 * (server.cpu_seconds() - cpu_ingest) / max(patched, 1)
        create_p99 = life.stats("create").quantiles_ms()[1]
        patch_p99 = life.stats("patch").quantiles_ms()[1]
        print(ingest.format(), life.format(), sep="\n", file=sys.stderr)
        lines += [
            f"ingest:    batch {batch_rate:,.0f} runs/s = {batch_rate * DAY_S / 1e6:,.0f} M runs/day"
            f" (100 runs/request, c={BATCH_CONCURRENCY})",
            f"           lifecycle create+PATCH {life_rate:,.0f} runs/s ="
            f" {life_rate * DAY_S / 1e6:,.1f} M runs/day (c={LIFECYCLE_CONCURRENCY};"
            f" p99 create {create_p99:.0f} ms, PATCH {patch_p99:.0f} ms)",
            f"server CPU: {batch_cpu_ms * 100:.1f} ms per 100 batched runs, {life_cpu_ms:.2f} ms per"
            f" lifecycle run: with one core of its own, at most ~{1000 / batch_cpu_ms:,.0f}"
            f" and ~{1000 / life_cpu_ms:,.0f} runs/s (a ceiling: commits also wait on fsync)",
        ]
        copy = workdir / "backup.sqlite"
        backup_s = backup(db, copy)
        after = count_runs(copy)
        lines.append(
            f"backup:    {after:,} runs, {file_bytes(copy) / 2**20:,.0f} MiB in {backup_s:.1f} s"
            " (telemetry-server backup, server running)"
        )
        server.stop()
        copy_s = copy_durably(copy, restored.db)
        started = time.monotonic()
        restored.start()
        health_s = time.monotonic() - started
        list_ms, page = first_list(restored.base_url)
        first_answer_s = time.monotonic() - started
        lines.append(
            f"restore:   copy {copy_s:.1f} s + start to first /health {health_s:.1f} s"
            f" + first list page ({page} runs) {list_ms:.0f} ms ="
            f" {copy_s + first_answer_s:.1f} s to the first answer"
        )
        failed = [r.format() for r in (ingest, life) if not ok(r)]
    except Exception:
        for proc in (server, restored):
            print(f"--- {proc.log_path.name}\n{tail(proc.log_path)}", file=sys.stderr)
        raise
    finally:
        server.stop()
        restored.stop()
    print("\n".join(lines))
    if failed:
        print("FAILED requests:\n" + "\n".join(failed))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
