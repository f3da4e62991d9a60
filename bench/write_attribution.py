"""Where the server's write latency goes, from its own log: which share of a slow write
was queueing behind the previous group, running its group, committing it (the WAL's
fsync), and whether its commit overlapped a WAL checkpoint pass.

    python bench/server_bench.py --rows 1000000 --prefilled /tmp/sb-1m.sqlite \\
        --server-log-level DEBUG --keep --workdir /tmp
    python bench/write_attribution.py /tmp/telemetry-bench-*/server-writes.log --last 2000

Reads the ``db_write_group`` lines the writer logs at DEBUG (operations, waited_ms: the
group's oldest write queued, run_ms, commit_ms) and the checkpoint thread's
``db_checkpoint`` lines (with their duration). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

STAGES = ("waited_ms", "run_ms", "commit_ms")


def quantile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def read(log: Path) -> tuple[list[tuple[float, dict[str, Any]]], list[tuple[float, float]]]:
    """(end time, group line) of each group; (start, end) of each checkpoint pass."""
    groups, passes = [], []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or "timestamp" not in entry:
            continue
        at = datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()
        if entry.get("event") == "db_write_group":
            groups.append((at, entry))
        elif entry.get("event") == "db_checkpoint":
            passes.append((at - float(entry["seconds"]), at))
    return groups, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--last", type=int, default=0, help="only the last N groups")
    parser.add_argument("--slow-ms", type=float, default=25.0)
    args = parser.parse_args()
    groups, passes = read(args.log)
    if args.last:
        groups = groups[-args.last :]
    if not groups:
        raise SystemExit("no db_write_group lines: run the server with TELEMETRY_LOG_LEVEL=DEBUG")
    print(f"{len(groups):,} groups")
    for key in ("operations", *STAGES):
        values = [float(entry[key]) for _, entry in groups]
        print(
            f"  {key:11s} p50 {quantile(values, 0.5):7.2f}  p90 {quantile(values, 0.9):7.2f}"
            f"  p99 {quantile(values, 0.99):7.2f}  max {max(values):7.2f}"
            f"  mean {statistics.mean(values):7.2f}"
        )
    slow = [entry for _, entry in groups if sum(entry[stage] for stage in STAGES) > args.slow_ms]
    print(f"groups whose oldest write took > {args.slow_ms:g} ms: {len(slow)}")
    if slow:
        total = sum(entry[stage] for entry in slow for stage in STAGES)
        print(
            "  their time: "
            + ", ".join(
                f"{stage[:-3]} {sum(entry[stage] for entry in slow) / total:.0%}"
                for stage in STAGES
            )
        )
    first = groups[0][0]
    passes = [(start, end) for start, end in passes if end >= first]
    overlapped: list[float] = []
    alone: list[float] = []
    for end, entry in groups:
        start = end - entry["commit_ms"] / 1000
        during = any(a < end and b > start for a, b in passes)
        (overlapped if during else alone).append(float(entry["commit_ms"]))
    span = groups[-1][0] - first
    busy = sum(end - start for start, end in passes)
    print(f"checkpoint passes: {len(passes)}, busy {busy / span if span else 0:.0%} of the time")
    for label, values in (("during a pass", overlapped), ("otherwise", alone)):
        if values:
            print(
                f"  commit_ms {label:13s} n={len(values):5d}  p50 {quantile(values, 0.5):6.2f}"
                f"  p90 {quantile(values, 0.9):6.2f}  p99 {quantile(values, 0.99):6.2f}"
            )


if __name__ == "__main__":
    main()
