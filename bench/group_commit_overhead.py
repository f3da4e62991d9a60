"""Both daemons' group-commit writers per write, in-process, side by side for two source
trees, in instructions.

    python bench/group_commit_overhead.py --compare-root /tmp/base-tree

``bench/write_cost.py`` counts the SQL statements of a write and never runs the
server's ``Writer``; ``bench/spoold_accept.py`` measures spoold's accept path through
HTTP, where the request handling dwarfs the accept thread. This counts each writer
alone, ``--concurrency`` tasks on one event loop awaiting it:

- ``writer``: the server's ``await writer.run(fn)``, ``fn`` one small INSERT (WAL,
  synchronous=OFF: no fsync to wait for, so groups form from what the loop hands over);
- ``acceptor``: spoold's ``await acceptor.submit(op)`` of a create (the spool put with
  its fsync, the runs index), as its HTTP handler does after validation.

Each tree runs in its own interpreter (``PYTHONPATH`` = the tree) under ``valgrind
--tool=callgrind``, twice: ``--writes`` and twice as many. A round's figure is the
difference of the two totals over the difference in writes, so start-up and import
cost cancel out; the median of ``--rounds`` rounds (alternated between the trees) is
printed, since GC, WAL checkpoints and group sizes still move a round's figure by
several percent. Also the groups each made and, without valgrind, process CPU time
per write (noisy on a shared machine). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("writer", "acceptor")


async def _timed(args: argparse.Namespace, write: Callable[[int], Awaitable[Any]]) -> float:
    """``args.writes`` writes from ``args.concurrency`` tasks; the process CPU seconds."""
    queue = list(range(args.writes))

    async def task() -> None:
        while queue:
            await write(queue.pop())

    cpu = time.process_time()
    await asyncio.gather(*(task() for _ in range(args.concurrency)))
    return time.process_time() - cpu


async def _writer(args: argparse.Namespace) -> tuple[float, int]:
    from server.storage.connection import open_writer
    from server.storage.writer import Writer

    conn = open_writer(
        Path(args.dir, "w.sqlite"), journal_mode="WAL", synchronous="OFF", busy_timeout_ms=5000
    )
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    writer = Writer(conn)
    writer.start()

    def insert(k: int) -> Awaitable[Any]:
        return writer.run(lambda c: c.execute("INSERT INTO t VALUES (?, 'x')", (k,)))

    cpu = await _timed(args, insert)
    await writer.close()
    return cpu, writer.stats.groups


async def _acceptor(args: argparse.Namespace) -> tuple[float, int]:
    from spoold.accept.acceptor import Acceptor
    from spoold.spool import Spool
    from spoold.state.ledger import Ledger
    from spoold.state.runs_index import RunsIndex

    spool = Spool(Path(args.dir, "spool"), min_free_disk_bytes=0)
    index = RunsIndex(Path(args.dir, "index.sqlite"))
    acceptor = Acceptor(spool, index, Ledger())
    acceptor.start()

    def create(k: int) -> Awaitable[Any]:
        event_id = f"00000000-0000-4000-8000-{k:012d}"
        body = {"event_id": event_id, "run_id": f"run-{k}", "agent_name": "a", "job_type": "j"}
        op = {"kind": "create", "event_id": event_id, "body": body, "accepted_at": "t"}
        return acceptor.submit(op)

    cpu = await _timed(args, create)
    await acceptor.close()
    index.close()
    spool.close()
    return cpu, acceptor.stats.groups


def _worker(args: argparse.Namespace) -> None:
    """In a tree's own interpreter: ``args.writes`` writes through ``args.worker``."""
    import logging

    import structlog

    # As the daemons run: INFO and above (a DEBUG line per group would be counted too).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    cpu, groups = asyncio.run((_writer if args.worker == "writer" else _acceptor)(args))
    print(json.dumps({"cpu_s": cpu, "groups": groups}))


def _run(
    target: str, root: Path, writes: int, concurrency: int, callgrind: Path | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="group-commit-overhead-") as tmp:
        argv = [sys.executable, __file__, "--worker", target, "--dir", tmp]
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
    parser.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--target", choices=TARGETS, action="append", help="default: both")
    parser.add_argument("--writes", type=int, default=2000, help="writes in the short run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--compare-root", type=Path, help="the other tree (e.g. the base)")
    parser.add_argument("--rounds", type=int, default=3, help="callgrind rounds per tree")
    parser.add_argument("--cpu-rounds", type=int, default=3, help="rounds without valgrind")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    trees = [("this tree", ROOT)]
    if args.compare_root is not None:
        trees.append(("compare", args.compare_root.resolve()))
    for target in args.target or TARGETS:
        _measure(target, trees, args)
    return 0


def _measure(target: str, trees: list[tuple[str, Path]], args: argparse.Namespace) -> None:
    """Per tree: each round's figure, then the median of the rounds (alternated)."""
    n, c = args.writes, args.concurrency
    figures: dict[str, list[float]] = {label: [] for label, _ in trees}
    with tempfile.TemporaryDirectory(prefix="group-commit-overhead-cg-") as tmp:
        for label, root in trees * args.rounds:
            short = _run(target, root, n, c, Path(tmp, f"{label}-1.out"))
            long = _run(target, root, 2 * n, c, Path(tmp, f"{label}-2.out"))
            figures[label].append((long["instructions"] - short["instructions"]) / n)
            print(
                f"{target:>8} {label:>9}: {figures[label][-1] / 1000:,.1f} k instructions per "
                f"write (c={c}; {2 * n} writes in {long['groups']} groups under callgrind)"
            )
    for label, root in trees:
        print(
            f"{target:>8} {label:>9}: median {statistics.median(figures[label]) / 1000:,.1f} k "
            f"instructions per write over {args.rounds} rounds [{root}]"
        )
    for label, root in trees * args.cpu_rounds:  # alternated
        cpu = _run(target, root, 10 * n, c, None)
        print(f"{target:>8} {label:>9}: {1e6 * cpu['cpu_s'] / (10 * n):,.1f} us CPU per write")


if __name__ == "__main__":
    sys.exit(main())
