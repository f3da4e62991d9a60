"""Where the server's write pauses came from: COMMIT with SQLite's checkpoint inside it,
against the same writes with checkpoints on their own thread (server.storage.checkpoint).

    python bench/checkpoint_pauses.py                 # 100,000 prefilled rows
    python bench/checkpoint_pauses.py --rows 1000000  # same at 1M rows

One process, no HTTP: a loop commits groups of 16 single-row INSERTs (the size of
a group under c=32 load) into a copy of a prefilled fleet database (WAL,
synchronous=FULL), timing each COMMIT. "in-commit" is SQLite's default (the
COMMIT that passes 1,000 WAL pages copies the WAL into the database and fsyncs
it); "background" is the server's way (``wal_autocheckpoint = 0``, a
``Checkpointer`` thread, and the writer's small catch-up between groups, timed
with the COMMIT it follows). The two alternate, ``--rounds`` times each, on the
same rows, so a busy disk hurts both alike. Prints p50/p99/max COMMIT time,
how many commits took over 10 and 25 ms, rows/s and the largest WAL file.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_bench import _STATUSES, iso, open_db, prefill_fleet, run_payload

from server.contract.models import RunCreate
from server.runtime.logs import configure_logging
from server.storage.checkpoint import Checkpointer
from server.storage.database import StorageSettings
from server.storage.runs import _INSERT_SQL, insert_params

GROUP = 16


def commit_times(template: Path, work: Path, mode: str, params: list[tuple[Any, ...]]) -> str:
    path = work / f"{mode}.sqlite"
    shutil.copyfile(template, path)
    conn = open_db(path, "FULL")
    checkpointer = None
    if mode == "background":
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        checkpointer = Checkpointer(
            path, synchronous="FULL", busy_timeout_ms=2000,
            restart_frames=StorageSettings(path).wal_restart_pages,
        )  # fmt: skip
        checkpointer.start()
    wal = Path(f"{path}-wal")
    largest = 0
    times: list[float] = []
    catch_ups: list[float] = []
    started = time.perf_counter()
    for first in range(0, len(params), GROUP):
        conn.execute("BEGIN IMMEDIATE")
        for row in params[first : first + GROUP]:
            conn.execute(_INSERT_SQL, row)
        tick = time.perf_counter()
        conn.execute("COMMIT")
        if checkpointer is not None:
            checkpointer.nudge()
            if checkpointer.catch_up_now(idle=False):  # a writer that is never idle
                caught = time.perf_counter()
                checkpointer.catch_up(conn)
                catch_ups.append(1e3 * (time.perf_counter() - caught))
        times.append(1e3 * (time.perf_counter() - tick))
        largest = max(largest, wal.stat().st_size if wal.exists() else 0)
    elapsed = time.perf_counter() - started
    if checkpointer is not None:
        checkpointer.stop()
    conn.close()
    if checkpointer is not None:
        checkpointer.close_file()
    for leftover in work.glob(f"{mode}.sqlite*"):
        leftover.unlink()
    times.sort()
    n = len(times)
    return (
        f"{mode:<11} COMMIT ms p50 {times[n // 2]:6.2f}  p99 {times[int(n * 0.99)]:6.2f}"
        f"  max {times[-1]:6.1f}  >10 ms {sum(t > 10 for t in times):4d}"
        f"  >25 ms {sum(t > 25 for t in times):4d}  {len(params) / elapsed:8,.0f} rows/s"
        f"  WAL file up to {largest / 1e6:5.1f} MB"
        + (f"; {len(catch_ups)} catch-ups, max {max(catch_ups):.1f} ms" if catch_ups else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="prefilled fleet rows")
    parser.add_argument("--groups", type=int, default=1500, help="groups of 16 per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    configure_logging("WARNING")  # not the checkpointer's DEBUG line per pass
    work = Path(tempfile.mkdtemp(prefix="checkpoint-pauses-"))
    try:
        template = work / "prefill.sqlite"
        prefill_fleet(template, args.rows, datetime.now(UTC) - timedelta(hours=1))
        rng = random.Random(3)
        now = datetime.now(UTC)
        params = [
            insert_params(
                RunCreate.model_validate(
                    run_payload(rng, start=now, status=_STATUSES[i % len(_STATUSES)])
                ),
                iso(now),
            )
            for i in range(args.groups * GROUP)
        ]
        print(f"{args.rows:,} prefilled rows; {args.groups:,} groups of {GROUP} per round")
        for _ in range(args.rounds):
            for mode in ("in-commit", "background"):
                print(commit_times(template, work, mode, params), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
