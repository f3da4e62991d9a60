"""Server time per dashboard page at fleet scale, against the 150 ms target.

    python bench/ui_bench.py                            # 100k runs, 20 pages per shape
    python bench/ui_bench.py --rows 1000000 --json ui.json
    python bench/ui_bench.py --db /tmp/ui-1m.sqlite --rows 1000000   # keep/reuse the file

Prints figures, asserts nothing (not a test). Prefills a database with the fleet's skew
(``server_bench.prefill_fleet``: 90 days ending now, Zipf agents, 20 job types, 85%
success / 8% failure / 3% running), starts the real server on 127.0.0.1 (stale-run reaper
off, as the other read benchmarks: the prefill's old running runs would be reaped during
the measurement) and asks for each page shape ``--pages`` times in a row on one keep-alive
connection, after warm-ups. Reported per shape: the server's CPU per page (all its
threads, ``/proc/<pid>/task/*/schedstat``: what waiting for a core on a busy machine
leaves out) and the client's wall p50 / max (noisy on a shared machine). Every answer
must be a 200 HTML page.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from list_cpu import cpu_seconds
from report import Figure, format_row, write_json
from server_bench import HOST, ServerProcess, prefill_fleet

TARGET_MS = 150.0


def shapes(path: Path) -> dict[str, str]:
    """Each page type, with realistic arguments read from the file."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        busiest = conn.execute(
            "SELECT agent_name FROM agent_runs INDEXED BY idx_runs_agent_status_created"
            " WHERE status = 'success' GROUP BY agent_name ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()[0]
        job = conn.execute("SELECT job_type FROM agent_runs LIMIT 1").fetchone()[0]
        event_id = conn.execute(
            "SELECT event_id FROM agent_runs ORDER BY created_at DESC LIMIT 1 OFFSET 500"
        ).fetchone()[0]
    finally:
        conn.close()
    agent = "/ui/agents/" + quote(busiest, safe="")
    return {
        "overview 24h": "/ui/",
        "overview 7d": "/ui/?window=7d",
        "runs (no filter)": "/ui/runs",
        "runs agent+status": "/ui/runs?" + urlencode({"agent_name": busiest, "status": "failure"}),
        "runs job, 1-day start window": "/ui/runs?"
        + urlencode({"job_type": job, "start_time_from": _days_ago(1)}),
        "runs stale=true": "/ui/runs?stale=true",
        "run detail": "/ui/runs/" + quote(event_id, safe=""),
        "agents 24h": "/ui/agents",
        "agents 7d": "/ui/agents?window=7d",
        "agent (busiest) 24h": agent,
        "agent (busiest) 7d": agent + "?window=7d",
        "job types 24h": "/ui/jobs",
        "job types 7d": "/ui/jobs?window=7d",
        "job type 24h": "/ui/jobs/" + quote(job, safe=""),
        "job type 7d": "/ui/jobs/" + quote(job, safe="") + "?window=7d",
    }


def _days_ago(days: int) -> str:
    moment = datetime.now(UTC).timestamp() - days * 86400
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def measure(server: ServerProcess, target: str, pages: int) -> tuple[float, list[float], int]:
    """Server CPU ms per page, the client's wall ms of each, and the page's size."""
    client = http.client.HTTPConnection(HOST, int(server.base_url.rsplit(":", 1)[1]), timeout=60)
    headers = {"Accept": "text/html"}
    body = b""
    try:
        for _ in range(3):  # warm: caches, thread pool, the reader's slow-shape memory
            client.request("GET", target, headers=headers)
            response = client.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{target}: {response.status} {body[:300]!r}")
        walls = []
        before = cpu_seconds(server.pid)
        for _ in range(pages):
            started = time.perf_counter()
            client.request("GET", target, headers=headers)
            response = client.getresponse()
            body = response.read()
            walls.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"{target}: {response.status}")
        cpu_ms = (cpu_seconds(server.pid) - before) * 1000 / pages
    finally:
        client.close()
    return cpu_ms, walls, len(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=20, help="asks per page shape")
    parser.add_argument("--db", type=Path, help="database file to fill (kept) or reuse")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("TELEMETRY_STALE_AFTER_S", "0")  # the reaper idle (see above)
    workdir = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    db = args.db or workdir / "ui.sqlite"
    figures: list[Figure] = []
    server: ServerProcess | None = None
    try:
        if not db.exists():
            seconds = prefill_fleet(db, args.rows, datetime.now(UTC))
            print(f"prefilled {args.rows:,} runs in {seconds:.0f} s", file=sys.stderr)
        server = ServerProcess(db, workdir / "server.log", "INFO")
        server.start()
        for name, target in shapes(db).items():
            cpu_ms, walls, size = measure(server, target, args.pages)
            figures += [
                Figure(f"ui {name}", "server CPU ms/page", cpu_ms, TARGET_MS, False, args.rows),
                Figure(
                    f"ui {name}",
                    "wall p50 ms",
                    statistics.median(walls),
                    TARGET_MS,
                    False,
                    args.rows,
                    note=f"max {max(walls):.0f} ms, {size / 1024:.0f} KiB",
                ),
            ]
            for figure in figures[-2:]:
                print(format_row(figure), flush=True)
    finally:
        if server is not None:
            server.stop()
        if args.db is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        write_json(args.json, figures, verified=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
