"""The accept path against the drain's bookkeeping, in one process, without HTTP.

    python bench/spoold_contention.py SPOOL_DIR [--seconds 10] [--no-drain]

SPOOL_DIR is a stopped spoold's spool directory (a backlog, e.g. one
``bench/spoold_bench.py --keep`` filled; it is changed: copy it first). spoold's
own accept thread (``Acceptor``) gets 1,000 creates/s from an open-loop schedule
while another thread does what the drainer does with each round once the server
has answered it - read the groups, settle them in the runs index, ack them in the
spool - as fast as it can, with no server and no HTTP. Latency is measured from
each create's scheduled time. What is left is the sharing of the two SQLite
files and the GIL between the accept path and the drain: the part of "the agent
feels the drain" that spoold controls, measurable even on a busy machine (run
``--no-drain`` for the floor of the same machine at the same moment).

Works with the daemons of any tree (``PYTHONPATH=/other/tree``), for a
side-by-side: this file only uses APIs both have.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_bench import run_payload

from server.contract.models import RunCreate
from spoold.accept.acceptor import Acceptor
from spoold.forward.handoff import LocalFaults, Slot, StopClock
from spoold.forward.record import RecordStage
from spoold.forward.rounds import Delivered, DrainStats
from spoold.spool.operations import create_op
from spoold.state.ledger import Ledger
from spoold.state.recovery import reconcile
from spoold.state.storage import open_storage

RATE = 1000.0
ROUND_OPS = 500


def quantile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spool_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-drain", action="store_true")
    args = parser.parse_args()
    storage = open_storage(args.spool_dir, capacity_bytes=8 << 30, min_free_disk_bytes=0)
    spool = storage.spool
    index, drain_index = storage.accept_index, storage.drain_index
    ledger = Ledger(reconcile(spool, index))
    stop = threading.Event()
    drained: list[int] = []
    records: list[float] = []

    def drain() -> None:
        clock = StopClock()
        recorder = RecordStage(
            Slot(), spool, drain_index, ledger, DrainStats(),
            LocalFaults(None, clock),  # type: ignore[arg-type]  # nothing fails here
        )  # fmt: skip
        while not stop.is_set():  # bounded by the backlog and by the load's end
            groups = spool.get_groups(ROUND_OPS, max_bytes=5 << 20)
            if not groups:
                return
            ops = [op for group in groups for op in group.ops]
            started = time.perf_counter()
            event_ids = [op["event_id"] for op in ops]
            recorder.record(Delivered(groups, event_ids, frozenset(), started))  # settle, ack
            records.append(time.perf_counter() - started)
            drained.append(len(ops))

    async def load() -> list[float]:
        acceptor = Acceptor(spool, index, ledger)
        acceptor.start()
        rng = random.Random(1)
        now = datetime.now(UTC)
        ops = [
            create_op(RunCreate.model_validate(run_payload(rng, start=now)), "2026-01-01T00:00:00Z")
            for _ in range(int(args.seconds * RATE))
        ]
        latencies: list[float] = []

        async def one(op: dict[str, Any], scheduled: float) -> None:
            await acceptor.submit(op)
            latencies.append(time.perf_counter() - scheduled)

        thread = threading.Thread(target=drain if not args.no_drain else lambda: None)
        thread.start()
        first = time.perf_counter() + 0.05
        tasks = []
        for i, op in enumerate(ops):
            scheduled = first + i / RATE
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(op, scheduled)))
        await asyncio.gather(*tasks)
        stop.set()
        thread.join(60)
        await acceptor.close()
        return latencies

    try:
        latencies = asyncio.run(load())
    finally:
        storage.close()
    tree = "sliced settles (the record stage)"
    print(
        f"{tree}: accept p50 {quantile_ms(latencies, 0.5):.1f} p99"
        f" {quantile_ms(latencies, 0.99):.1f} max {max(latencies) * 1e3:.1f} ms;"
        f" drain bookkeeping {sum(drained) / args.seconds:,.0f} ops/s"
        f" (record per round p50 {quantile_ms(records, 0.5):.0f}, max"
        f" {quantile_ms(records, 1.0):.0f} ms)"
    )


if __name__ == "__main__":
    main()
