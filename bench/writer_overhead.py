"""The server's writer thread per write (hand-over, group, answer), side by side for two
source trees, in instructions.

    python bench/writer_overhead.py --compare-root /tmp/base-tree

``bench/write_cost.py`` counts the SQL statements of a write and never runs the
``Writer``; this counts what the writer adds around them: ``await writer.run(fn)`` from
``--concurrency`` tasks on one event loop, ``fn`` one small INSERT, grouped and
committed by the writer thread (WAL, synchronous=OFF: no fsync to wait for, so groups
form from what the loop hands over, as under load). Each tree runs in its own
interpreter (``PYTHONPATH`` = the tree) under ``valgrind --tool=callgrind``, twice:
``--writes`` and twice as many. The figure is the difference of the two totals over
the difference in writes, so start-up and import cost cancel out; instruction counts
are the same whatever else runs on the machine. Also the groups the writer made (its
``stats``) and, without valgrind, process CPU time per write (noisy on a shared
machine). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _worker(args: argparse.Namespace) -> None:
    """In a tree's own interpreter: ``args.writes`` writes through its Writer."""
    from server.storage.connection import open_writer
    from server.storage.writer import Writer

    conn = open_writer(Path(args.db), journal_mode="WAL", synchronous="OFF", busy_timeout_ms=5000)
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    writer = Writer(conn)
    writer.start()

    async def writes() -> float:
        queue = list(range(args.writes))

        async def task() -> None:
            while queue:
                k = queue.pop()
                await writer.run(lambda c, k=k: c.execute("INSERT INTO t VALUES (?, 'x')", (k,)))

        cpu = time.process_time()
        await asyncio.gather(*(task() for _ in range(args.concurrency)))
        cpu = time.process_time() - cpu
        await writer.close()
        return cpu

    cpu = asyncio.run(writes())
    print(json.dumps({"cpu_s": cpu, "groups": writer.stats.groups}))


def _run(root: Path, writes: int, concurrency: int, callgrind: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="writer-overhead-") as tmp:
        argv = [sys.executable, __file__, "--worker", "--db", f"{tmp}/w.sqlite"]
        argv += ["--writes", str(writes), "--concurrency", str(concurrency)]
        if callgrind is not None:
            argv[:0] = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}"]
        env = {**os.environ, "PYTHONPATH": str(root)}
        done = subprocess.run(
            argv, env=env, cwd=root, capture_output=True, text=True, check=True, timeout=3600
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if callgrind is not None:
        result["instructions"] = _instructions(callgrind)
    return result


def _instructions(path: Path) -> int:
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            total = max(total, int(line.split()[1]))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--writes", type=int, default=2000, help="writes in the short run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--compare-root", type=Path, help="the other tree (e.g. the base)")
    parser.add_argument("--cpu-rounds", type=int, default=3, help="rounds without valgrind")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    trees = [("this tree", ROOT)]
    if args.compare_root is not None:
        trees.append(("compare", args.compare_root.resolve()))
    with tempfile.TemporaryDirectory(prefix="writer-overhead-cg-") as tmp:
        for label, root in trees:
            short = _run(root, args.writes, args.concurrency, Path(tmp, f"{label}-1.out"))
            long = _run(root, 2 * args.writes, args.concurrency, Path(tmp, f"{label}-2.out"))
            per_write = (long["instructions"] - short["instructions"]) / args.writes
            groups = long["groups"]
            print(
                f"{label:>10}: {per_write / 1000:,.1f} k instructions per write "
                f"(c={args.concurrency}; {2 * args.writes} writes in {groups} groups under "
                f"callgrind) [{root}]"
            )
    for label, root in trees * args.cpu_rounds:  # alternated
        cpu = _run(root, 10 * args.writes, args.concurrency, None)
        print(f"{label:>10}: {1e6 * cpu['cpu_s'] / (10 * args.writes):,.1f} us CPU per write")
    return 0


if __name__ == "__main__":
    sys.exit(main())
