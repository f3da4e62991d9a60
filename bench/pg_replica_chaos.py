"""The replica fault at the issue's size: 3 ``telemetry-server`` replicas on one throwaway
PostgreSQL (tests/pg_cluster.py), 3 spoold sidecars listing all 3, agents writing run
lifecycles (create, PATCH progress, PATCH finish) through the sidecars while a random
replica is ``kill -9``-ed at random moments and restarted; after each round, a bounded
wait for the sidecars to drain and the check against the database
(tests/faults/replica_chaos.py: every acknowledged operation present, every run in its
final state, one row per event_id, no regression read along the way).

    python bench/pg_replica_chaos.py [--rounds 20] [--runs 50000] [--seed N] [--agents 8]

Prints one line per round: runs, operations acknowledged, kills (and those that landed
while a sidecar had a batch in flight to the killed replica), write and drain seconds,
batches the sidecars moved to another replica (failovers) or retried with every replica
down, operations lost, regressions, whether the checks passed, and the CPU seconds of each
role (this process's agents, the sidecars, the replicas and their start-ups, PostgreSQL);
then a summary. The
rounds share one database, so each round's check covers every earlier round's runs too.
Wall-clock figures on a shared 2-core machine are noisy: read them as an envelope.
Exits 1 if any round's check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"
for _dir in (_TESTS, _TESTS / "integration", _TESTS / "faults"):
    sys.path.insert(0, str(_dir))

import pg_cluster  # noqa: E402
from pg_fleet import start_fleet  # noqa: E402
from procs import Reaper, RunLedger  # noqa: E402
from replica_chaos import Watch, run_round  # noqa: E402


async def main(rounds: int, runs: int, seed: int, agents: int) -> int:
    bin_path = pg_cluster.bin_dir()
    if bin_path is None:
        print("PostgreSQL binaries missing: apt-get install postgresql", file=sys.stderr)
        return 2
    cluster = pg_cluster.Cluster.start(bin_path)
    reaper = Reaper()
    failed = 0
    try:
        url = cluster.url(cluster.new_database("bench_chaos"))
        with tempfile.TemporaryDirectory(prefix="replica-chaos-") as workdir:
            fleet = start_fleet(reaper, Path(workdir), url, postmaster_pid=cluster.process.pid)
            ledger: list[RunLedger] = []
            watch = Watch()
            started, cpu = time.monotonic(), time.process_time()
            kills = 0
            for round_no in range(1, rounds + 1):
                report = await run_round(
                    fleet,
                    ledger,
                    round_no,
                    runs=runs,
                    seed=seed,
                    watch=watch,
                    agents_per_sidecar=agents,
                    write_timeout_s=1800,
                    drain_timeout_s=600,
                )
                kills += report.kills
                failed += not report.passed
                print(report.line(), flush=True)
                for problem in report.verdict.problems[:5] + report.regressions[:5]:
                    print(f"  {problem}", flush=True)
            print(
                f"total: rounds={rounds} runs={len(ledger)} kills={kills}"
                f" restarts={fleet.restarts} failed_rounds={failed}"
                f" wall_s={time.monotonic() - started:.0f}"
                f" agents_cpu_s={time.process_time() - cpu:.0f}"
                f" sampled_reads={watch.reads} seed={seed}"
            )
            reaper.stop_all()
    finally:
        reaper.stop_all()
        cluster.destroy()
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=50_000, help="lifecycles per round")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 1_000_000)
    parser.add_argument("--agents", type=int, default=8, help="concurrent agents per sidecar")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.rounds, args.runs, args.seed, args.agents)))
