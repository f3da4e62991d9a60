"""Spool benchmark: what group commit buys on this machine's disk.

    python bench/spool_bench.py                   # ~5 s per timed scenario
    python bench/spool_bench.py --seconds 2 --open-ops 200000

Everything runs in this process, on fresh spools in one temp dir (same disk):

1. raw persist-queue: ``SQLiteAckQueue.put`` of one op per item in a loop (one
   thread): the library's own commit rate, for reference.
2. accept, per-op commits: ``GroupCommitter(window_ms=0, max_group=1)``, so each
   submit is one queue put and one fsync - 32 concurrent clients.
3. accept, group commit: ``GroupCommitter(window_ms=2, max_group=512)`` - the
   same 32 clients. The ratio 3/2 is what group commit buys.
4. drain per op: ``get_groups(1)`` + ``ack`` on scenario 2's backlog (one op
   per queue item), i.e. persist-queue's per-item get+ack.
5. drain per group: ``get_groups(500)`` + ``ack`` on scenario 3's backlog.
6. open: a spool of ``--open-ops`` operations in groups of ``--open-group`` is
   closed and reopened; the time includes auto_resume and the recount.

Figures are rates measured in this run; quote them as ratios (DESIGN.md).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from persistqueue.sqlackqueue import SQLiteAckQueue

from spoold.spool import GroupCommitter, Spool
from spoold.spool.codec import GroupSerializer, encode_group, encode_op

CONCURRENCY = 32


def make_op(i: int) -> dict[str, Any]:
    """An operation the size of a typical create (~300 bytes of JSON)."""
    return {
        "kind": "create",
        "event_id": str(uuid.uuid4()),
        "body": {
            "event_id": str(uuid.uuid4()),
            "run_id": f"run-{i}",
            "agent_name": "bench-agent",
            "job_type": "bench",
            "status": "running",
            "start_time": "2024-01-01T00:00:00+00:00",
            "items_discovered": i,
            "metrics_json": {"seq": i},
        },
    }


def open_spool(path: Path) -> Spool:
    return Spool(path, capacity_bytes=1 << 40, min_free_disk_bytes=0)


def raw_puts(path: Path, seconds: float) -> float:
    queue = SQLiteAckQueue(str(path), multithreading=True, serializer=GroupSerializer)
    data = encode_group([encode_op(make_op(0))], time.time())
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        queue.put(data)
        count += 1
    elapsed = time.perf_counter() - start
    queue.close()
    return count / elapsed


async def accept(
    spool: Spool, seconds: float, window_ms: float, max_group: int
) -> dict[str, float]:
    committer = GroupCommitter(spool, window_ms=window_ms, max_group=max_group)
    committer.start()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await committer.submit(make_op(c * 10_000_000 + i))
            latencies.append(time.perf_counter() - started)
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    await committer.close()
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "ops_s": len(latencies) / elapsed,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "ops_per_group": committer.ops_committed / max(1, committer.groups_committed),
    }


def drain(spool: Spool, seconds: float, max_ops: int) -> float:
    ops, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        groups = spool.get_groups(max_ops)
        if not groups:
            break
        spool.ack(groups)
        ops += sum(len(g.ops) for g in groups)
    return ops / (time.perf_counter() - start)


def build_backlog(path: Path, ops: int, per_group: int) -> None:
    encoded = [encode_op(make_op(i)) for i in range(per_group)]
    with open_spool(path) as spool:
        for _ in range(ops // per_group):
            spool.put_encoded(encoded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per timed scenario")
    parser.add_argument("--open-ops", type=int, default=1_000_000)
    parser.add_argument("--open-group", type=int, default=32)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the spools")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    try:
        raw = raw_puts(root / "raw", args.seconds)
        print(f"raw persist-queue put (1 thread)     {raw:10.0f} puts/s")
        per_op_spool, group_spool = open_spool(root / "per-op"), open_spool(root / "group")
        per_op = asyncio.run(accept(per_op_spool, args.seconds, 0.0, 1))
        grouped = asyncio.run(accept(group_spool, args.seconds, 2.0, 512))
        for name, r in (("per-op commits", per_op), ("group commit  ", grouped)):
            print(
                f"accept c={CONCURRENCY}, {name}       {r['ops_s']:10.0f} ops/s  "
                f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                f"{r['ops_per_group']:6.1f} ops/item"
            )
        print(f"  group commit / per-op commits       {grouped['ops_s'] / per_op['ops_s']:10.1f} x")
        per_op_drain = drain(per_op_spool, args.seconds, 1)
        group_drain = drain(group_spool, args.seconds, 500)
        print(f"get+ack per op (1 op/item)           {per_op_drain:10.0f} ops/s")
        print(f"get+ack per group (max_ops=500)      {group_drain:10.0f} ops/s")
        print(f"  per group / per op                  {group_drain / per_op_drain:10.1f} x")
        per_op_spool.close()
        group_spool.close()
        started = time.perf_counter()
        build_backlog(root / "open", args.open_ops, args.open_group)
        built = time.perf_counter() - started
        started = time.perf_counter()
        with open_spool(root / "open") as spool:
            opened = time.perf_counter() - started
            stats = spool.stats()
        print(
            f"open {stats.depth_ops} ops in {stats.depth_groups} items "
            f"({stats.file_bytes / 1e6:.0f} MB, built in {built:.1f} s)   {opened:10.2f} s"
        )
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"max RSS of this process              {rss_mb:10.0f} MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
