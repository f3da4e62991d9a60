"""Failover to a synchronous standby, timed over several rounds: how long ``pg_promote``
takes, and how long from the promotion's start until the server acknowledges a write
again (and until spoold forwards again), with the loss check of every round.

    python bench/pg_failover_bench.py [--rounds 5] [--async-rounds 0] [--json out.json]

Each round is ``tests/faults/standby_failover.py``'s, on fresh processes: a primary and
a standby streaming synchronously (Debian's PostgreSQL binaries), ``telemetry-server``
on ``postgresql://...@P1,P2/db?target_session_attrs=read-write``, spoold in front,
writers on both, ``kill -9`` of the primary's postmaster mid-ingest, 1 s (a failover
manager's decision), ``pg_promote(wait)``. ``--async-rounds`` adds rounds with
asynchronous replication and the standby's feed frozen before the kill, to show the
loss the check reports there.

Wall-clock on a shared 2-core machine: noisy (other work slows a promotion's checkpoint
and the first connections); read the median and the maximum. spoold's figure includes
the ``Retry-After: 5`` the server answers while the database is unavailable, which
spoold honours. Needs PostgreSQL's binaries (``/usr/lib/postgresql/*/bin``); run as
root it runs them as an unprivileged user, as the tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
for _sub in ("bench", "tests", "tests/faults", "tests/integration"):
    if str(_ROOT / _sub) not in sys.path:
        sys.path.insert(0, str(_ROOT / _sub))

import pg_cluster  # noqa: E402
from procs import Reaper  # noqa: E402
from report import Figure, format_row, write_json  # noqa: E402
from standby_failover import Outcome, failover_round  # noqa: E402

RESUME_TARGET_S = 10.0


async def _rounds(count: int, *, synchronous: bool) -> list[Outcome]:
    bin_path = pg_cluster.bin_dir()
    if bin_path is None:
        raise SystemExit("PostgreSQL binaries missing (/usr/lib/postgresql/*/bin)")
    outcomes = []
    for n in range(count):
        with tempfile.TemporaryDirectory(prefix="pg-failover-bench-") as workdir:
            reaper = Reaper()
            try:
                outcome = await failover_round(
                    bin_path,
                    Path(workdir),
                    reaper,
                    synchronous=synchronous,
                    lagging=not synchronous,
                    seed=n,
                )
            finally:
                reaper.stop_all()
        mode = "sync" if synchronous else "async, standby frozen"
        print(f"round {n + 1}/{count} ({mode}): {outcome.summary()}", flush=True)
        outcomes.append(outcome)
    return outcomes


def _figures(outcomes: list[Outcome], scenario: str) -> list[Figure]:
    def spread(values: list[float]) -> str:
        return f"min {min(values):.3f} max {max(values):.3f} over {len(values)} rounds"

    promote = [o.promote_s for o in outcomes]
    resume = [o.resume_s for o in outcomes]
    spoold = [o.spoold_resume_s for o in outcomes]
    lower = {"higher_is_better": False}
    return [
        Figure(
            scenario, "promote s p50", statistics.median(promote), **lower, note=spread(promote)
        ),
        Figure(
            scenario,
            "promote->write s p50",
            statistics.median(resume),
            RESUME_TARGET_S,
            **lower,
            note=spread(resume),
        ),
        Figure(scenario, "promote->write s max", max(resume), RESUME_TARGET_S, **lower),
        Figure(
            scenario,
            "spoold resume s max",
            max(spoold),
            RESUME_TARGET_S,
            **lower,
            note=spread(spoold),
        ),
        Figure(
            scenario,
            "acked ops lost",
            float(sum(o.lost for o in outcomes)),
            0.0,
            **lower,
            rows=sum(o.direct.acked + o.spooled.acked for o in outcomes),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--async-rounds", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sync = asyncio.run(_rounds(args.rounds, synchronous=True))
    figures = _figures(sync, "failover to a sync standby")
    if args.async_rounds:
        lossy = asyncio.run(_rounds(args.async_rounds, synchronous=False))
        figures += [
            f for f in _figures(lossy, "async standby, feed frozen") if f.target is None
        ] + [
            Figure(
                "async standby, feed frozen",
                "acked ops lost",
                float(sum(o.lost for o in lossy)),
                note="shown, not a target: the check must see this loss",
                higher_is_better=False,
            )
        ]
    for figure in figures:
        print(format_row(figure))
    verified = all(o.lost == 0 for o in sync)
    if args.json:
        write_json(args.json, figures, verified=verified)
    if not verified:
        raise SystemExit("acknowledged operations lost with a synchronous standby")


if __name__ == "__main__":
    main()
