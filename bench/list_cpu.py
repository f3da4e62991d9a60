"""Server CPU per page of ``GET /api/v1/runs?limit=100``, against the floor.

    python bench/list_cpu.py                 # 100k rows, 2,000 pages per shape (~1 min)
    python bench/list_cpu.py --rows 1000000

Prints figures, asserts nothing (not a test). Prefills a database with the fleet's skew
(``bench/index_cost.py``: 2,000 agents, 20 job types, 85% success / 8% failure / 3%
running; a git repository on every run and a commit hash, one of 3,000, on 90%), starts
the real server on 127.0.0.1 and, for each query shape, asks for the same page N times
in a row on one keep-alive connection. The server's CPU per page is its utime+stime
(``/proc/<pid>/stat``, all threads) over the pages, divided by N: HTTP parsing,
validation, the query and the answer's bytes. The floor is the same query's rows
fetched by this process straight from SQLite (``fetchall`` of the plain columns,
best of 5 x 50): what any Python server pays before building an answer. ``/health``
gives the HTTP share (aiohttp, middlewares, the request log line at INFO).
"""

from __future__ import annotations

import argparse
import http.client
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_cost import load
from server_bench import HOST, ServerProcess

from server.contract.models import RunQuery
from server.storage.connection import open_reader
from server.storage.cursor import Position
from server.storage.runs import query_sql
from server.storage.window import plan_window

COMMITS = 3000
LIMIT = 100


def prefill(path: Path, rows: int) -> None:
    """The fleet's rows through the server's schema, then commit hashes on 90%."""
    load(path, "new", "OFF", rows)
    rng = random.Random(3)
    commits = [f"{rng.getrandbits(160):040x}" for _ in range(COMMITS)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "UPDATE agent_runs SET git_commit_hash = ? WHERE id = ?",
        (
            (rng.choice(commits), row_id)
            for (row_id,) in conn.execute("SELECT id FROM agent_runs").fetchall()
            if rng.random() < 0.9
        ),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def shapes(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    busiest = conn.execute(
        "SELECT agent_name FROM agent_runs GROUP BY agent_name ORDER BY count(*) DESC LIMIT 1"
    ).fetchone()[0]
    newest = str(conn.execute("SELECT max(start_time) FROM agent_runs").fetchone()[0])
    day = newest[:10]
    return {
        "no filter": {},
        "agent+status": {"agent_name": busiest, "status": "success"},
        "job_type": {"job_type": "job_type_03"},
        "status": {"status": "failure"},
        "start_time day": {
            "start_time_from": f"{day}T00:00:00+00:00",
            "start_time_to": f"{day}T23:59:59+00:00",
        },
    }


def floor_ms(conn: sqlite3.Connection, params: dict[str, Any], cursor: bool) -> float:
    """Best-of CPU of fetching the page's rows from SQLite, plain columns."""
    query = RunQuery.model_validate({**params, "limit": LIMIT})
    after = None
    if cursor:  # the position after 10 pages, as the cursor shape reads
        row = conn.execute(
            "SELECT created_at, id FROM agent_runs ORDER BY created_at DESC, id DESC"
            f" LIMIT 1 OFFSET {10 * LIMIT - 1}"
        ).fetchone()
        after = Position(str(row[0]), int(row[1]))
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(50):
            conn.execute("BEGIN")
            sql = query_sql(query, after, plan_window(conn, query))
            conn.execute(*sql).fetchall()
            conn.execute("COMMIT")
        best = min(best, (time.process_time() - started) / 50)
    return best * 1000


def page_cpu_ms(
    server: ServerProcess, client: http.client.HTTPConnection, target: str, pages: int
) -> tuple[float, int]:
    """Server CPU per page over ``pages`` sequential asks of the same page."""
    size = 0
    for _ in range(20):  # warm: caches, thread pool
        client.request("GET", target)
        size = len(client.getresponse().read())
    before = server.cpu_seconds()
    for _ in range(pages):
        client.request("GET", target)
        response = client.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{target}: {response.status} {body[:200]!r}")
    return (server.cpu_seconds() - before) / pages * 1000, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=2000, help="pages per shape")
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="TELEMETRY_LOG_LEVEL of the server (default INFO, its own: one line per request)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = Path(tmp) / "telemetry.sqlite"
        started = time.monotonic()
        prefill(db, args.rows)
        print(f"list CPU, {args.rows:,} rows (prefilled in {time.monotonic() - started:.0f} s),")
        print(
            f"limit {LIMIT}, {args.pages} pages per shape, sqlite {sqlite3.sqlite_version},"
            f" server log level {args.log_level}"
        )
        reader = open_reader(db, busy_timeout_ms=2000)
        server = ServerProcess(db, Path(tmp) / "server.log", args.log_level)
        server.start()
        try:
            client = http.client.HTTPConnection(HOST, int(server.base_url.rsplit(":", 1)[1]))
            cases = {name: (params, False) for name, params in shapes(reader).items()}
            client.request("GET", f"/api/v1/runs?limit={LIMIT}&offset={9 * LIMIT}")
            cursor = client.getresponse()
            cursor.read()
            cases["cursor page"] = ({"cursor": cursor.getheader("X-Next-Cursor")}, True)
            print(
                f"{'shape':16s} {'server CPU/page':>16s} {'floor':>8s} {'ratio':>6s} {'target':>7s}"
            )
            health, _ = page_cpu_ms(server, client, "/health", args.pages)
            print(f"{'/health (HTTP)':16s} {health:13.3f} ms  (no query: the HTTP share of a page)")
            for name, (params, deep) in cases.items():
                target = f"/api/v1/runs?{urlencode({**params, 'limit': LIMIT})}"
                cpu, size = page_cpu_ms(server, client, target, args.pages)
                floor = floor_ms(reader, {k: v for k, v in params.items() if k != "cursor"}, deep)
                print(
                    f"{name:16s} {cpu:13.3f} ms {floor:5.3f} ms {cpu / floor:5.1f}x"
                    f" {cpu / 0.6:6.0%}   ({size / 1024:.0f} KiB)",
                    flush=True,
                )
            client.close()
        finally:
            server.stop()
            reader.close()


if __name__ == "__main__":
    main()
