"""Export and prune on a fleet-shaped database: throughput, memory, writer holds, writer p99.

    python bench/prune_export_bench.py                    # 100,000 rows (~1 min)
    python bench/prune_export_bench.py --rows 1000000     # ~5-8 min
    python bench/prune_export_bench.py --rows 1000000 --json out.json

Prints figures, asserts nothing (not a test). Steps, on one file:

1. Prefill ``--rows`` fleet-shaped runs (``server_bench.prefill_fleet``: 2,000 agents,
   Zipf, 85/8/3% statuses) spread over 180 days ending now, so a 90-day prune deletes
   about half. The prefill writes the file as servers before incremental auto-vacuum
   did (``auto_vacuum = NONE``).
2. ``telemetry-server vacuum`` on it: the one-off conversion an existing database needs
   (a full VACUUM); seconds, and the file size before and after.
3. A server on the file. Export of every run, NDJSON then CSV, read by a client as fast
   as it can: rows/s, MB/s, and the growth of the server's RSS over its RSS before the
   export (sampled every 50 ms from /proc). The NDJSON line count is checked against
   COUNT(*) (``verified``).
4. The create+PATCH lifecycle at c=8 for ``--seconds``, alone (baseline), then again
   while ``POST /api/v1/maintenance/prune {"older_than": "90d"}`` runs: p99 of both,
   side by side; the prune's time, its longest batch (writer hold, measured in the
   writer thread around the batch's statements) and its longest vacuum step.
5. The database file's size (the WAL's beside it) before and after the prune and its
   incremental vacuum.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import server_bench
from loadgen import run_load
from report import Figure, format_row, write_json

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 8
READ_BYTES = 1 << 20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """The process's peak RSS while the block runs, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_kib(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 1024


def file_bytes(db: Path) -> int:
    return sum(Path(f"{db}{s}").stat().st_size for s in ("", "-wal") if Path(f"{db}{s}").exists())


def export(base_url: str, fmt: str) -> tuple[int, int, float]:
    """Read a whole export as fast as possible: (bytes, newlines, seconds)."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    started = time.monotonic()
    conn.request("GET", f"/api/v1/runs/export?format={fmt}")
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"export answered {response.status}: {response.read()[:300]!r}")
    size = lines = 0
    while chunk := response.read(READ_BYTES):
        size += len(chunk)
        lines += chunk.count(b"\n")
    seconds = time.monotonic() - started
    conn.close()
    return size, lines, seconds


def post_json(base_url: str, path: str, body: Any, timeout_s: float = 3600) -> Any:
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {answer}")
    return answer


def lifecycle(base_url: str, seconds: float, name: str) -> Any:
    return run_load(
        base_url,
        server_bench.Lifecycle(),
        name=name,
        concurrency=CONCURRENCY,
        max_ops=10_000_000,
        max_seconds=seconds,
    )


def slow_groups(base_url: str) -> tuple[int, int]:
    """(write transactions over 50 ms, all write transactions) so far, from the server's
    Prometheus histogram (commit included)."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/metrics", headers={"Accept": "text/plain"})
    text = conn.getresponse().read().decode()
    conn.close()
    under = total = 0
    for line in text.splitlines():
        if line.startswith('telemetry_db_write_transaction_seconds_bucket{le="0.05"}'):
            under = int(float(line.split()[-1]))
        elif line.startswith("telemetry_db_write_transaction_seconds_count"):
            total = int(float(line.split()[-1]))
    return total - under, total


def count_runs(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0])
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="fleet rows (default 100,000)")
    parser.add_argument(
        "--seconds", type=float, default=15.0, help="each lifecycle load (default 15)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures there")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    rows = args.rows
    workdir = Path(tempfile.mkdtemp(prefix="prune-export-bench-"))
    db = workdir / "fleet.sqlite"
    figures: list[Figure] = []
    verified = True

    def figure(scenario: str, metric: str, value: float, target: float | None = None,
               higher: bool = True, note: str = "") -> None:  # fmt: skip
        item = Figure(scenario, metric, value, target, higher, rows, note)
        figures.append(item)
        print(format_row(item), flush=True)

    try:
        server_bench.HISTORY = timedelta(days=180)  # so a 90-day prune deletes about half
        print(f"prefilling {rows:,} runs over 180 days ...", file=sys.stderr)
        server_bench.prefill_fleet(db, rows, datetime.now(UTC))

        before = file_bytes(db)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "server", "vacuum", "--json", "--force", "--db", str(db)],
            capture_output=True, text=True, cwd=ROOT, check=True,
        )  # fmt: skip
        vacuum_s = time.monotonic() - started
        report = json.loads(result.stdout)
        figure("vacuum: convert an existing file (full VACUUM)", "seconds", vacuum_s, None, False,
               f"{before / 1e6:,.0f} -> {report['bytes_after'] / 1e6:,.0f} MB")  # fmt: skip

        server = server_bench.ServerProcess(db, workdir / "server.log", "WARNING")
        server.start()
        try:
            total = count_runs(db)
            for fmt in ("ndjson", "csv"):
                with RssSampler(server.pid) as rss:
                    size, lines, seconds = export(server.base_url, fmt)
                if fmt == "ndjson" and lines != total:
                    verified = False
                    print(f"NDJSON export had {lines} lines, COUNT(*) {total}", file=sys.stderr)
                scenario = f"export {fmt}, every run"
                figure(scenario, "rows/s", total / seconds, None, True,
                       f"{size / seconds / 1e6:,.0f} MB/s, {size / 1e6:,.0f} MB")  # fmt: skip
                figure(scenario, "server RSS growth MB", rss.growth_mb, 50.0, False,
                       f"RSS {rss.baseline / 1024:,.0f} -> {rss.peak / 1024:,.0f} MB")  # fmt: skip

            slow0, groups0 = slow_groups(server.base_url)
            alone = lifecycle(server.base_url, args.seconds, "lifecycle alone")
            slow1, groups1 = slow_groups(server.base_url)
            _, p99_alone, max_alone = alone.stats().quantiles_ms()

            size_before = db.stat().st_size
            wal_before = file_bytes(db) - size_before
            outcome: dict[str, Any] = {}

            def prune() -> None:
                started = time.monotonic()
                outcome["report"] = post_json(
                    server.base_url, "/api/v1/maintenance/prune", {"older_than": "90d"}
                )
                outcome["seconds"] = time.monotonic() - started

            pruner = threading.Thread(target=prune)
            pruner.start()
            during = lifecycle(server.base_url, args.seconds, "lifecycle during prune")
            still_pruning = pruner.is_alive()
            pruner.join()
            slow2, groups2 = slow_groups(server.base_url)
            _, p99_during, max_during = during.stats().quantiles_ms()
            prune_report = outcome["report"]
            note = "prune outlasted the load" if still_pruning else "prune ended first"
            figure(f"lifecycle create+PATCH c={CONCURRENCY}, no prune", "p99 ms", p99_alone,
                   None, False, f"max {max_alone:.1f} ms, {alone.ops_per_s:,.0f} runs/s")  # fmt: skip
            figure(f"lifecycle create+PATCH c={CONCURRENCY}, during prune", "p99 ms", p99_during,
                   None, False,
                   f"max {max_during:.1f} ms, {during.ops_per_s:,.0f} runs/s; {note}")  # fmt: skip
            figure("prune 90d (server endpoint)", "seconds", outcome["seconds"], None, False,
                   f"{prune_report['deleted']:,} runs in {prune_report['batches']} batches")  # fmt: skip
            figure("prune 90d", "runs deleted/s", prune_report["deleted"] / outcome["seconds"])
            figure("prune 90d", "max batch statements ms", prune_report["max_batch_ms"], 50.0,
                   False, f"commit excluded; {prune_report['max_batch_cpu_ms']:.1f} ms of it CPU; "
                   f"largest batch {prune_report['max_batch_rows']} rows")  # fmt: skip
            figure("write transactions > 50 ms, lifecycle alone", "count", slow1 - slow0, None,
                   False, f"of {groups1 - groups0:,} (commit included)")  # fmt: skip
            figure("write transactions > 50 ms, lifecycle + whole prune", "count",
                   slow2 - slow1, None, False,
                   f"of {groups2 - groups1:,} (commit included)")  # fmt: skip
            figure("prune 90d: incremental vacuum", "max step ms",
                   prune_report["max_vacuum_step_ms"], 50.0, False,
                   f"{prune_report['vacuumed_pages']:,} pages given back")  # fmt: skip
            size_after, wal_after = db.stat().st_size, file_bytes(db) - db.stat().st_size
            figure("database file before prune", "MB", size_before / 1e6, None, False,
                   f"WAL {wal_before / 1e6:,.0f} MB beside it")  # fmt: skip
            figure("database file after prune + incremental vacuum", "MB", size_after / 1e6,
                   None, False,
                   f"{size_after / size_before:.0%} of before; WAL {wal_after / 1e6:,.0f} MB")  # fmt: skip
            acked = set(during.recording.notes.get("acked", [])) | set(
                alone.recording.notes.get("acked", [])
            )
            conn = sqlite3.connect(db)
            try:
                found = sum(
                    conn.execute(
                        "SELECT COUNT(*) FROM agent_runs WHERE event_id = ?", (event_id,)
                    ).fetchone()[0]
                    for event_id in acked
                )
            finally:
                conn.close()
            if found != len(acked):
                verified = False
                print(f"acked {len(acked)} runs, found {found}", file=sys.stderr)
        finally:
            server.stop()
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        write_json(args.json, figures, verified=verified)
    print(f"verified: {verified}")
    return 0 if verified else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.exit(main())
