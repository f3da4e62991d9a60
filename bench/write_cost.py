"""SQLite CPU per write, side by side for two source trees, on one fleet-shaped prefill.

    python bench/write_cost.py --rows 100000 --compare-root /tmp/base
    python bench/write_cost.py --rows 100000 --callgrind            # instruction counts

The server's own write functions (``runs.insert_row``, ``runs.heartbeat``, ``runs.touch``,
``runs.update_run``), in the writer's shape (one transaction per group of ``--group``
operations, WAL, synchronous=NORMAL, the writer's TEMP triggers for the run counters
and distinct values and their reads before COMMIT), over a copy of a prefill made by
``server_bench.prefill_fleet`` at the older tree's schema; each tree migrates its copy
first (the upgrade's time is printed). Per round and tree: ``--ops`` running runs
inserted, each given a heartbeat with progress (``heartbeat``), a sidecar-style refresh
of last_seen_at (``touch``), then its terminal PATCH (``update_run``). Python builds the
parameters before the clock starts, so the figures are the statements' cost (SQLite
and the sqlite3 module's call).

Why CPU and instructions: the machine is shared and noisy. ``time.process_time`` per
operation, rounds alternated between the trees, the median of rounds printed; with
``--callgrind`` each tree's timed loops also run under ``valgrind --tool=callgrind``
(instructions counted only inside them), which is repeatable to a fraction of a percent.
The file size per run after the writes is printed too. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("insert", "heartbeat", "touch", "terminal")


def _steps(
    conn: sqlite3.Connection,
    runs: Any,
    params: list[Any],
    ids: list[str],
    finishes: list[dict[str, Any]],
    instants: tuple[str, str],
) -> dict[str, Callable[[int], Any]]:
    """The four writes of run ``i``, as the server's writer runs them."""
    now, later = instants
    return {
        "insert": lambda i: runs.insert_row(conn, params[i]),
        "heartbeat": lambda i: runs.heartbeat(conn, ids[i], {"step": i}, now, 1 << 20),
        "touch": lambda i: runs.touch(conn, ids[i], later, None),
        "terminal": lambda i: runs.update_run(conn, ids[i], finishes[i], later),
    }


def _worker(args: argparse.Namespace) -> None:
    """In a tree's own interpreter: migrate a copy, then time each kind of write."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import server_bench

    from server.contract.models import RunCreate, RunUpdate
    from server.contract.timestamps import format_instant
    from server.storage import runs
    from server.storage.counters import RunCounters
    from server.storage.metadata import DistinctValues
    from server.storage.schema import migrate

    path = Path(args.db)
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    cpu, wall = time.process_time(), time.perf_counter()
    migrate(conn)
    migration = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # The writer's own TEMP triggers and the reads of their deltas before each COMMIT:
    # a trigger on the table (these too) makes every write keep a statement journal.
    hooks: tuple[Any, ...]
    try:  # one TEMP trigger per change for both (from the tree that merged them)
        from server.storage.run_deltas import RunDeltas

        hooks = (RunDeltas(RunCounters(), DistinctValues()),)
    except ImportError:  # an older tree: one set of triggers each
        hooks = (RunCounters(), DistinctValues())
    for hook in hooks:
        hook.install(conn)
    results: dict[str, list[float]] = {kind: [] for kind in KINDS}
    rng = random.Random(args.seed)
    now_dt = datetime.now(UTC)
    for round_no in range(args.rounds):
        # The server's own clock text (canonical): the runs are prompt, as live ones are.
        now = format_instant(now_dt + timedelta(seconds=round_no))
        payloads = [
            server_bench.run_payload(rng, start=now_dt, status="running") for _ in range(args.ops)
        ]
        params = [runs.insert_params(RunCreate.model_validate(p), now) for p in payloads]
        ids = [p["event_id"] for p in payloads]
        finishes = [
            RunUpdate.model_validate(server_bench.finish_payload(rng)).changes() for _ in ids
        ]
        later = format_instant(now_dt + timedelta(seconds=round_no, milliseconds=500))
        steps = _steps(conn, runs, params, ids, finishes, (now, later))
        for kind in KINDS[: args.kinds]:
            step = steps[kind]
            started = time.process_time()
            for first in range(0, args.ops, args.group):
                conn.execute("BEGIN IMMEDIATE")
                for i in range(first, min(first + args.group, args.ops)):
                    step(i)
                for hook in hooks:
                    hook.before_commit(conn)  # its SQL; applying it is Python
                conn.execute("COMMIT")
            results[kind].append((time.process_time() - started) / args.ops * 1e6)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    count = conn.execute("SELECT count(*) FROM agent_runs").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    print(
        json.dumps(
            {
                "us": results,
                "migration": migration,
                "bytes_per_run": pages * page / count,
                "file_bytes": pages * page,
            }
        )
    )


def run_tree(
    root: Path,
    template: Path,
    workdir: Path,
    args: argparse.Namespace,
    *,
    kinds: int = len(KINDS),
    callgrind: bool = False,
) -> dict[str, Any]:
    """One worker on a fresh copy of ``template`` (migrated by the tree unless it is its
    own migrated copy); with ``callgrind``, the instructions spent in ``sqlite3_step``."""
    db = workdir / "tree.sqlite"
    shutil.copyfile(template, db)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--db",
        str(db),
        "--ops",
        str(args.callgrind_ops if callgrind else args.ops),
        "--rounds",
        "1" if callgrind else str(args.rounds),
        "--group",
        str(args.group),
        "--seed",
        str(args.seed),
        "--kinds",
        str(kinds),
    ]
    out_file = workdir / "callgrind.out"
    if callgrind:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=sqlite3_step",
            f"--callgrind-out-file={out_file}",
            *command,
        ]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, timeout=7200
    )
    for leftover in workdir.glob("tree.sqlite*"):
        leftover.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"worker for {root} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if callgrind:
        result["instructions"] = _instructions(out_file)
        out_file.unlink()
    return result


def migrated_copy(root: Path, template: Path, workdir: Path, name: str) -> Path:
    """The prefill as ``root``'s server leaves it after its start-up migration."""
    from_path = workdir / f"migrated-{name}.sqlite"
    shutil.copyfile(template, from_path)
    script = (
        "import sqlite3, sys; from server.storage.schema import migrate;"
        " c = sqlite3.connect(sys.argv[1], isolation_level=None); migrate(c);"
        " c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(from_path)],
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,  # python -c puts the working directory first on sys.path
        check=True,
        timeout=7200,
    )
    return from_path


def _instructions(path: Path) -> int:
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            total = max(total, int(line.split()[1]))
    return total


def _schema_version() -> int:
    from server.storage.schema import SCHEMA_VERSION

    return SCHEMA_VERSION


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--ops", type=int, default=3000, help="runs per round (default 3,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per tree (alternated)")
    parser.add_argument("--group", type=int, default=32, help="operations per transaction")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--compare-root", type=Path, help="the other tree (e.g. the base commit)")
    parser.add_argument("--prefilled", type=Path, help="reuse (or keep) the prefill here")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kinds", type=int, default=len(KINDS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--callgrind-ops", type=int, default=500, help="runs per callgrind worker (default 500)"
    )
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import server_bench

    trees: list[tuple[str, Path]] = []
    if args.compare_root is not None:
        trees.append(("before", args.compare_root.resolve()))
        server_bench.PREFILL_SCHEMA = min(
            server_bench.schema_of(args.compare_root), _schema_version()
        )
    trees.append(("after", ROOT))
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="write-cost-") as temp:
        workdir = Path(temp)
        template = args.prefilled or workdir / "prefill.sqlite"
        if not template.exists():
            print(f"prefilling {args.rows:,} fleet rows ...", file=sys.stderr)
            server_bench.prefill_fleet(template, args.rows, datetime.now(UTC))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
        for _ in range(args.rounds):  # alternate: the machine's noise falls on both
            for name, root in trees:
                results[name].append(run_tree(root, template, workdir, args))
        counted: dict[str, dict[str, float]] = {}
        if args.callgrind:  # kind k = (kinds 0..k) - (kinds 0..k-1): the counts are exact
            for name, root in trees:
                migrated = migrated_copy(root, template, workdir, name)
                totals = [0] + [
                    run_tree(root, migrated, workdir, args, kinds=k, callgrind=True)["instructions"]
                    for k in range(1, len(KINDS) + 1)
                ]
                counted[name] = {
                    kind: (totals[k + 1] - totals[k]) / args.callgrind_ops
                    for k, kind in enumerate(KINDS)
                }
                migrated.unlink()
    print(
        f"\nSQLite CPU per write, {args.rows:,} prefilled runs, {args.ops:,} ops per round,"
        f" {args.group} per transaction, median of {args.rounds}x{args.rounds} rounds (us)"
    )
    print(
        f"{'tree':8s} "
        + " ".join(f"{k:>10s}" for k in KINDS)
        + f" {'lifecycle':>10s} {'B/run':>8s} {'migrate s':>10s}"
    )
    for name, _ in trees:
        medians = {
            kind: statistics.median(v for r in results[name] for v in r["us"][kind])
            for kind in KINDS
        }
        lifecycle = medians["insert"] + medians["terminal"]
        size = statistics.median(r["bytes_per_run"] for r in results[name])
        migrate = statistics.median(r["migration"]["cpu_s"] for r in results[name])
        print(
            f"{name:8s} "
            + " ".join(f"{medians[k]:10.1f}" for k in KINDS)
            + f" {lifecycle:10.1f} {size:8.0f} {migrate:10.2f}"
        )
    if counted:
        print(f"\ninstructions in sqlite3_step per write (callgrind, {args.callgrind_ops} ops)")
        for name, _ in trees:
            print(
                f"{name:8s} "
                + " ".join(f"{counted[name][k]:10,.0f}" for k in KINDS)
                + f" {counted[name]['insert'] + counted[name]['terminal']:10,.0f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
