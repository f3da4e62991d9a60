"""Server CPU per page of ``GET /api/v1/runs?limit=100``, against the floor.

    python bench/list_cpu.py                 # 100k rows, 2,000 pages per shape (~1 min)
    python bench/list_cpu.py --rows 1000000 --json list.json
    python bench/list_cpu.py --db /tmp/l.sqlite --code-root . --code-root /tmp/old  # side by side

Prints figures, asserts nothing (not a test). Prefills a database with the fleet's skew
(``bench/index_cost.py``: 2,000 agents, 20 job types, 85% success / 8% failure / 3%
running; a git repository on every run and a commit hash, one of 3,000, on 90%), starts
the real server on 127.0.0.1 and, for each query shape, asks for the same page N times
in a row on one keep-alive connection. The server's CPU per page is its CPU time
(``/proc/<pid>/task/*/schedstat``, all threads) over the pages, divided by N: HTTP parsing,
validation, the query and the answer's bytes. The floor is the same query's rows
fetched by this process straight from SQLite (``fetchall`` of the plain columns,
best of 5 x 50): what any Python server pays before building an answer. ``/health``
gives the HTTP share (aiohttp, middlewares, the request log line at INFO, and the probe's
own read).

With several ``--code-root`` trees, one server per tree serves the same file and they take
turns (``--rounds``), so load from elsewhere on a shared machine falls on all alike; the
answers must be byte for byte the same (``verified`` in ``--json``).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from index_cost import load
from report import Figure, format_row, write_json
from server_bench import HOST, ROOT, ServerProcess, free_port, http_get_json

from server.contract.models import RunQuery
from server.storage import window
from server.storage.connection import open_reader
from server.storage.cursor import Position
from server.storage.runs import query_sql

COMMITS = 3000
LIMIT = 100
TARGET_MS = 0.6


def prefill(path: Path, rows: int, late_share: float) -> None:
    """The fleet's rows through the server's schema, then commit hashes on 90%."""
    load(path, "new", "OFF", rows, late_share=late_share)
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
    busiest_job = conn.execute(
        "SELECT job_type FROM agent_runs WHERE agent_name = ? GROUP BY job_type"
        " ORDER BY count(*) DESC LIMIT 1",
        (busiest,),
    ).fetchone()[0]
    day = newest[:10]
    week_back = (datetime.fromisoformat(newest) - timedelta(days=7)).date().isoformat()
    month_back = (datetime.fromisoformat(newest) - timedelta(days=30)).date().isoformat()
    return {
        "no filter": {},
        "agent+status": {"agent_name": busiest, "status": "success"},
        "agent+job_type": {"agent_name": busiest, "job_type": busiest_job},
        "job_type": {"job_type": "job_type_03"},
        "status": {"status": "failure"},
        "start_time day": {
            "start_time_from": f"{day}T00:00:00+00:00",
            "start_time_to": f"{day}T23:59:59+00:00",
        },
        # The far arm's worst shapes: a window a week back, whose late runs were recorded
        # up to a week later, and an open-ended one (every late run before its bound).
        "agent week back": {
            "agent_name": busiest,
            "start_time_from": f"{week_back}T00:00:00+00:00",
            "start_time_to": f"{week_back}T23:59:59+00:00",
        },
        "status to week back": {
            "status": "failure",
            "start_time_to": f"{week_back}T00:00:00+00:00",
        },
        # Bounded below only: its far arm reads the runs created before they started.
        "from a month back": {"start_time_from": f"{month_back}T00:00:00+00:00"},
    }


#: How deep the cursor shape starts: after 10 pages of the unfiltered list.
CURSOR_PAGES = 10


def brute_force_ids(conn: sqlite3.Connection, params: dict[str, Any], cursor: bool) -> list[str]:
    """The page's event ids as a scan of the whole table (no index, none of the server's
    SQL) finds them: what the server's answer is checked against."""
    query = RunQuery.model_validate({**params, "limit": LIMIT})
    clauses: list[str] = []
    values: list[Any] = []
    for column in ("agent_name", "job_type", "status"):
        if getattr(query, column) is not None:
            clauses.append(f"{column} = ?")
            values.append(getattr(query, column))
    if query.start_time_from is not None:
        clauses.append("start_time >= ?")
        values.append(query.start_time_from)
    if query.start_time_to is not None:
        clauses.append("start_time <= ?")
        values.append(query.start_time_to)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    offset = CURSOR_PAGES * LIMIT if cursor else 0
    sql = (
        f"SELECT event_id FROM agent_runs NOT INDEXED{where}"
        f" ORDER BY created_at DESC, id DESC LIMIT {LIMIT} OFFSET {offset}"
    )
    return [str(row[0]) for row in conn.execute(sql, values)]


def floor_ms(conn: sqlite3.Connection, params: dict[str, Any], cursor: bool) -> float:
    """Best-of CPU of fetching the page's rows from SQLite, plain columns."""
    query = RunQuery.model_validate({**params, "limit": LIMIT})
    after = None
    if cursor:  # the position after 10 pages, as the cursor shape reads
        row = conn.execute(
            "SELECT created_at, id FROM agent_runs ORDER BY created_at DESC, id DESC"
            f" LIMIT 1 OFFSET {CURSOR_PAGES * LIMIT - 1}"
        ).fetchone()
        after = Position(str(row[0]), int(row[1]))
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(50):
            conn.execute("BEGIN")
            sql = query_sql(query, after, late_newest_first=window.late_newest_first(conn, query))
            conn.execute(*sql).fetchall()
            conn.execute("COMMIT")
        best = min(best, (time.process_time() - started) / 50)
    return best * 1000


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process, to the nanosecond (``schedstat``: /proc's
    utime+stime tick at 10 ms, too coarse for a few hundred pages)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def page_cpu_ms(
    server: ServerProcess, client: http.client.HTTPConnection, target: str, pages: int
) -> tuple[float, bytes]:
    """Server CPU per page over ``pages`` sequential asks of the same page, and the page."""
    body = b""
    for _ in range(20):  # warm: caches, thread pool
        client.request("GET", target)
        body = client.getresponse().read()
    before = cpu_seconds(server.pid)
    for _ in range(pages):
        client.request("GET", target)
        response = client.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{target}: {response.status} {body[:200]!r}")
    return (cpu_seconds(server.pid) - before) / pages * 1000, body


class CallgrindServer(ServerProcess):
    """The server under valgrind's callgrind: instructions executed in user space, the
    same whatever else runs on the machine (``--callgrind``; ~50x slower)."""

    def __init__(self, db: Path, log_path: Path, log_level: str, out: Path) -> None:
        super().__init__(db, log_path, log_level)
        self.out = out
        self.dumps = 0

    def start(self, timeout_s: float = 600.0) -> None:
        port = free_port()
        server = shutil.which("telemetry-server", path=str(Path(sys.executable).parent))
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",  # start-up at full speed; instrumented around the pages
            f"--callgrind-out-file={self.out}",
            sys.executable,
            *([server] if server else ["-m", "server"]),
            *("--host", HOST, "--port", str(port), "--db", str(self.db)),
        ]
        env = {**os.environ, "TELEMETRY_LOG_LEVEL": self.log_level}
        for name in ("TELEMETRY_API_AUTH_ENABLED", "TELEMETRY_RATE_LIMIT_ENABLED"):
            env.pop(name, None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )
        self.base_url = f"http://{HOST}:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if http_get_json(self.base_url + "/health", timeout=30).get("status") == "ok":
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server under valgrind not up in {timeout_s:.0f} s")

    def control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def instructions(self, client: http.client.HTTPConnection, target: str, pages: int) -> float:
        """Millions of instructions per page over ``pages`` asks of the same page."""
        for _ in range(10):  # warm, uninstrumented
            client.request("GET", target)
            client.getresponse().read()
        self.control("-i", "on")
        for _ in range(5):
            client.request("GET", target)
            client.getresponse().read()
        self.control("-z")
        for _ in range(pages):
            client.request("GET", target)
            response = client.getresponse()
            if response.status != 200:
                raise RuntimeError(f"{target}: {response.status}")
            response.read()
        self.dumps += 1
        self.control("-d", f"page{self.dumps}")
        self.control("-i", "off")
        dump = Path(f"{self.out}.{self.dumps}")
        for _ in range(100):  # the dump is written asynchronously
            text = dump.read_text() if dump.exists() else ""
            for line in text.splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1]) / pages / 1e6
            time.sleep(0.1)
        raise RuntimeError(f"no callgrind summary in {dump}")


class Tree:
    """One server under test: the code it runs (``--code-root``), its process and client."""

    def __init__(
        self, root: Path, db: Path, log: Path, log_level: str, callgrind: Path | None = None
    ) -> None:
        self.root = root
        self.server = (
            ServerProcess(db, log, log_level)
            if callgrind is None
            else CallgrindServer(db, log, log_level, callgrind)
        )
        self.client: http.client.HTTPConnection | None = None

    def start(self) -> None:
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(self.root)  # the daemon imports this tree
        try:
            self.server.start()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        port = int(self.server.base_url.rsplit(":", 1)[1])
        self.client = http.client.HTTPConnection(HOST, port, timeout=300)

    def measure(self, target: str, pages: int) -> tuple[float, bytes]:
        """CPU ms per page, or with ``--callgrind`` millions of instructions per page."""
        assert self.client is not None
        if isinstance(self.server, CallgrindServer):
            millions = self.server.instructions(self.client, target, pages)
            self.client.request("GET", target)
            return millions, self.client.getresponse().read()
        return page_cpu_ms(self.server, self.client, target, pages)

    def cursor(self) -> str:
        """The X-Next-Cursor after CURSOR_PAGES pages of the unfiltered list (as this tree
        signs it)."""
        assert self.client is not None
        self.client.request(
            "GET", f"/api/v1/runs?limit={LIMIT}&offset={(CURSOR_PAGES - 1) * LIMIT}"
        )
        response = self.client.getresponse()
        response.read()
        return str(response.getheader("X-Next-Cursor"))

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.server.stop()


def interleaved(
    trees: list[Tree], target: Callable[[Tree], str], pages: int, rounds: int
) -> tuple[list[float], list[bytes]]:
    """Each tree's CPU per page (the least of ``rounds`` rounds: load from elsewhere on a
    shared machine only adds; trees take turns, so it falls on all of them alike) and
    its page."""
    samples: list[list[float]] = [[] for _ in trees]
    bodies: list[bytes] = [b"" for _ in trees]
    for _ in range(rounds):
        for index, tree in enumerate(trees):
            cpu, bodies[index] = tree.measure(target(tree), max(1, pages // rounds))
            samples[index].append(cpu)
    return [min(values) for values in samples], bodies


def main() -> None:
    # The stale-run reaper off: the fleet prefill's old `running` runs (3%) would be reaped
    # during the measurement, a one-time upgrade cost (bench/stale_bench.py measures it),
    # not the steady state, where a reaper pass with nothing due is one indexed read.
    os.environ.setdefault("TELEMETRY_STALE_AFTER_S", "0")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=2000, help="pages per shape (and tree)")
    parser.add_argument("--rounds", type=int, default=8, help="turns the pages are split in")
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="TELEMETRY_LOG_LEVEL of the server (default INFO, its own: one line per request)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    parser.add_argument("--db", type=Path, default=None, help="prefilled file to reuse/keep")
    parser.add_argument(
        "--code-root",
        type=Path,
        action="append",
        default=None,
        help="a source tree to serve from (repeat to compare trees side by side; the first"
        " is the one the figures are for; default: this tree)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--late-share",
        type=float,
        default=0.01,
        help="share of runs recorded 1-7 days after they started (start_time windows read"
        " those through the late indexes; default 0.01)",
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count instructions (valgrind callgrind: the same on a busy machine) instead"
        " of CPU time; use with --pages 100 --rounds 1 (about 50x slower)",
    )
    args = parser.parse_args()
    roots = [root.resolve() for root in args.code_root or [Path(__file__).resolve().parents[1]]]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = args.db or Path(tmp) / "telemetry.sqlite"
        started = time.monotonic()
        if not db.exists():
            prefill(db, args.rows, args.late_share)
        counter = open_reader(db, busy_timeout_ms=2000)
        count = int(counter.execute("SELECT count(*) FROM agent_runs").fetchone()[0])
        counter.close()
        print(f"list CPU, {count:,} rows (ready in {time.monotonic() - started:.0f} s),")
        print(
            f"limit {LIMIT}, {args.pages} pages per shape in {args.rounds} turns,"
            f" sqlite {sqlite3.sqlite_version}, server log level {args.log_level}"
        )
        # One copy of the file per tree: a tree may migrate it (schema 5 rebuilds the
        # table), and then an older tree would refuse it.
        copies = (
            [db] if len(roots) == 1 else [Path(tmp) / f"tree-{i}.sqlite" for i in range(len(roots))]
        )
        for copy in copies:
            if copy != db:
                shutil.copyfile(db, copy)
        trees = [
            Tree(
                root,
                copies[index],
                Path(tmp) / f"server-{index}.log",
                args.log_level,
                Path(tmp) / f"callgrind-{index}.out" if args.callgrind else None,
            )
            for index, root in enumerate(roots)
        ]
        unit = "M instructions" if args.callgrind else "ms of server CPU"
        figures: list[Figure] = []
        same_bytes = right_runs = True
        rows: sqlite3.Connection | None = None
        try:
            for tree in trees:
                tree.start()
            # The floor reads the first tree's copy, as that tree's server migrated it.
            rows = open_reader(copies[0], busy_timeout_ms=2000)
            cases: dict[str, tuple[dict[str, Any], bool]] = {
                name: (params, False) for name, params in shapes(rows).items()
            }
            cases["cursor page"] = ({}, True)
            header = f"{'shape':16s} " + " ".join(
                f"{f'tree {i + 1}':>9s}" for i in range(len(trees))
            )
            print(f"{header} {'floor':>8s}   ({unit} per page; floor: ms)")
            for index, root in enumerate(roots):
                print(f"  tree {index + 1}: {root}")
            health, _ = interleaved(trees, lambda _: "/health", args.pages, args.rounds)
            print(f"{'/health':16s} " + " ".join(f"{value:9.3f}" for value in health))
            for name, (params, deep) in cases.items():

                def target(tree: Tree, params: dict[str, Any] = params, deep: bool = deep) -> str:
                    query = {**params, "cursor": tree.cursor()} if deep else params
                    return f"/api/v1/runs?{urlencode({**query, 'limit': LIMIT})}"

                cpu, bodies = interleaved(trees, target, args.pages, args.rounds)
                same_bytes &= all(body == bodies[0] for body in bodies)
                answered = [run["event_id"] for run in orjson.loads(bodies[0])]
                if answered != brute_force_ids(rows, params, deep):
                    print(f"  {name}: the answer differs from a scan of the table")
                    right_runs = False
                floor = floor_ms(rows, params, deep)
                print(
                    f"{name:16s} "
                    + " ".join(f"{value:9.3f}" for value in cpu)
                    + f" {floor:8.3f}   ({len(bodies[0]) / 1024:.0f} KiB)",
                    flush=True,
                )
                figures.append(
                    Figure(
                        f"list page, limit {LIMIT}: {name}",
                        "M instructions/page" if args.callgrind else "server CPU ms/page",
                        cpu[0],
                        None if args.callgrind else TARGET_MS,
                        higher_is_better=False,
                        rows=count,
                        note="; ".join(f"tree {i + 1}: {value:.3f}" for i, value in enumerate(cpu))
                        if len(cpu) > 1
                        else "",
                    )
                )
                figures.append(
                    Figure(
                        f"list page, limit {LIMIT}: {name}",
                        "floor ms (SQLite)",
                        floor,
                        rows=count,
                        note="plain columns fetched by the bench itself",
                    )
                )
            figures.append(
                Figure(
                    "/health (the HTTP share)",
                    "M instructions/req" if args.callgrind else "server CPU ms/req",
                    health[0],
                    rows=count,
                )
            )
        finally:
            for tree in trees:
                tree.stop()
            if rows is not None:
                rows.close()
        if args.json is not None:  # first: a closed stdout (| head) must not lose it
            write_json(args.json, figures, verified=same_bytes and right_runs)
        print()
        for figure in figures:
            print(format_row(figure))
        if len(trees) > 1:
            print("answers identical across trees:", same_bytes)
        print("answers equal to a scan of the table:", right_runs)


if __name__ == "__main__":
    main()
