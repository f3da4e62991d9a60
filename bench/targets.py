"""Every speed target of the project in one run: each benchmark script, at each size.

    python bench/targets.py                          # full run: 100,000 and 1,000,000 rows
    python bench/targets.py --sizes 20000 --only list_cpu ops_reads   # a quick look
    python bench/targets.py --markdown perf.md       # also write the README's table
    python bench/targets.py --runs 3 --log-dir perf-run --markdown perf.md   # target ranges
    python bench/targets.py --from-logs perf-run --markdown perf.md   # again, from their figures

Runs the scripts one after another (never two at once: the machine has two cores and
each script measures a live daemon), each with ``--json`` into a temp dir, a script
marked *sized* once per ``--sizes`` value with ``--rows N`` (rows prefilled in the
database, or operations in the spool's backlog), the others once. Then prints every
figure with its target and ratio, and whether every script verified that every write
it got acknowledged was stored. Exit status 0 if every target was met and every script
verified its writes, 1 if a target was missed, 2 if a script failed or did not verify.

``--runs N`` repeats the whole run N times, one after another (logs under
``run-K/``), and then shows each figure as its median and its range over the runs,
with the number of runs that met its target: a target is quoted as a range, never as
the best run. The exit status is the worst run's.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Figure, format_row, read_json

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Script:
    """One benchmark script and how to call it."""

    name: str
    sized: bool  # run once per --sizes value with --rows N
    extra: tuple[str, ...] = ()
    #: In a full run; the others run only when named with --only (too long for every run).
    default: bool = True


SCRIPTS: tuple[Script, ...] = (
    Script("server_bench", sized=True),
    Script("list_cpu", sized=True),
    Script("ops_reads", sized=True),
    Script("spoold_accept", sized=False),
    Script("spoold_bench", sized=True),
    Script("stats_bench", sized=True),
    Script("prune_export_bench", sized=True),
    # Migration 6's table rebuild at 1M rows takes minutes: measured on request.
    Script("stale_bench", sized=True, default=False),
    # The footprint soak: 20 minutes of load, the server killed every 45 s, on request.
    Script(
        "spoold_footprint",
        sized=False,
        extra=("--seconds", "1200", "--index-max-mb", "16", "--sample-every", "30"),
        default=False,
    ),
    # Needs PostgreSQL's binaries; ~30 s a round: on request (``--only pg_failover_bench``).
    Script("pg_failover_bench", sized=False, default=False),
)


@dataclass
class Outcome:
    """What one script run produced."""

    label: str
    seconds: float
    returncode: int
    verified: bool
    figures: list[Figure]


def run_script(script: Script, rows: int | None, workdir: Path, log_dir: Path) -> Outcome:
    """Run one script to completion, its output to a log file; read back its figures."""
    label = script.name if rows is None else f"{script.name} rows={rows:,}"
    out = workdir / f"{script.name}-{rows or 0}.json"
    log = log_dir / f"{script.name}-{rows or 0}.log"
    argv = [sys.executable, str(BENCH / f"{script.name}.py"), "--json", str(out), *script.extra]
    if rows is not None:
        argv += ["--rows", str(rows)]
    print(f"== {label}: {' '.join(argv[1:])} (log {log})", flush=True)
    started = time.monotonic()
    with log.open("wb") as sink:
        done = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    if not out.exists():
        print(f"   no figures (exit {done.returncode}); tail of the log:", flush=True)
        print("\n".join(log.read_text(errors="replace").splitlines()[-15:]), flush=True)
        return Outcome(label, seconds, done.returncode, False, [])
    verified, figures = read_json(out)
    print(f"   {seconds:.0f} s, exit {done.returncode}, verified={verified}", flush=True)
    return Outcome(label, seconds, done.returncode, verified, figures)


def _number(value: float) -> str:
    """Three significant figures, never in exponent form: 2,751 / 20.3 / 0.358."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown(outcomes: list[Outcome]) -> str:
    """The README's performance table: one row per figure with a target, then the others."""
    lines = [
        "| scenario | rows | metric | measured | target | ratio |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for outcome in outcomes:
        for figure in outcome.figures:
            rows = "" if figure.rows is None else f"{figure.rows:,}"
            target = "" if figure.target is None else f"{figure.target:g}"
            ratio = "" if figure.ratio is None else f"{figure.ratio:.2f}x"
            mark = {True: "", False: " **missed**", None: ""}[figure.met]
            lines.append(
                f"| {figure.scenario} | {rows} | {figure.metric} | {_number(figure.value)} "
                f"| {target} | {ratio}{mark} |"
            )
    return "\n".join(lines) + "\n"


@dataclass
class Spread:
    """One figure over several full runs: every value, and how many met the target."""

    first: Figure  # scenario, metric, rows and target, as the first run wrote them
    values: list[float]
    met: int

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def range_text(self) -> str:
        low, high = min(self.values), max(self.values)
        return _number(low) if low == high else f"{_number(low)}-{_number(high)}"

    def met_text(self) -> str:
        return "" if self.first.target is None else f"{self.met}/{len(self.values)}"


def spreads(runs: list[list[Outcome]]) -> list[Spread]:
    """Each figure (scenario, metric, rows) over the runs, in the order first seen."""
    merged: dict[tuple[str, str, int | None], Spread] = {}
    for outcomes in runs:
        for outcome in outcomes:
            for figure in outcome.figures:
                key = (figure.scenario, figure.metric, figure.rows)
                spread = merged.setdefault(key, Spread(figure, [], 0))
                spread.values.append(figure.value)
                spread.met += figure.met is True
    return list(merged.values())


def markdown_ranges(runs: list[list[Outcome]]) -> str:
    """The README's table over several runs: median, range, target, runs that met it."""
    lines = [
        f"| scenario | rows | metric | median | range ({len(runs)} runs) | target "
        "| median / target | met |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for spread in spreads(runs):
        figure = spread.first
        rows = "" if figure.rows is None else f"{figure.rows:,}"
        target = "" if figure.target is None else f"{figure.target:g}"
        ratio = "" if not figure.target else f"{spread.median / figure.target:.2f}x"
        met = spread.met_text()
        if met and spread.met < len(spread.values):
            met = f"**{met}**"
        lines.append(
            f"| {figure.scenario} | {rows} | {figure.metric} | {_number(spread.median)} "
            f"| {spread.range_text()} | {target} | {ratio} | {met} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--only", nargs="+", choices=[s.name for s in SCRIPTS], help="run only these scripts"
    )
    parser.add_argument("--markdown", type=Path, help="write the README table here")
    parser.add_argument("--log-dir", type=Path, help="keep the scripts' logs here")
    parser.add_argument("--runs", type=int, default=1, help="full runs, one after another")
    parser.add_argument(
        "--from-logs",
        type=Path,
        help="run nothing: summarise the figures a --log-dir of --runs N kept (run-K/*.json)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be between 1 and 20")
    return args


def one_run(chosen: list[Script], sizes: list[int], log_dir: Path) -> list[Outcome]:
    """Every chosen script at every size, once; prints the run's figures and verdicts."""
    outcomes: list[Outcome] = []
    started = time.monotonic()
    log_dir.mkdir(parents=True, exist_ok=True)
    for script in chosen:
        for rows in sizes if script.sized else [None]:
            outcomes.append(run_script(script, rows, log_dir, log_dir))
    print()
    print(f"one run, {time.monotonic() - started:.0f} s, {os.cpu_count()} cores")
    header = f"{'scenario':<52} {'metric':<18} {'value':>12} {'target':>10} {'ratio':>7}"
    print(f"{header} {'':<6} {'rows':>9} note")
    for outcome in outcomes:
        for figure in outcome.figures:
            print(format_row(figure))
    print()
    for outcome in outcomes:
        print(f"{outcome.label}: {outcome.seconds:.0f} s, verified={outcome.verified}")
    return outcomes


def verdict(outcomes: list[Outcome]) -> int:
    """0 every target met and every write verified, 1 a target missed, 2 a script failed."""
    failed = [o.label for o in outcomes if o.returncode not in (0, 1) or not o.verified]
    missed = [f for o in outcomes for f in o.figures if f.met is False]
    print(f"targets missed: {len(missed)}; scripts failed or unverified: {failed or 'none'}")
    if failed:
        return 2
    return 1 if missed else 0


def kept_runs(log_dir: Path) -> list[list[Outcome]]:
    """The outcomes of the runs a ``--log-dir`` kept, from their figures (JSON), in run order
    and, within a run, in the order the scripts ran (their files' times)."""
    runs = []
    for run_dir in sorted(log_dir.glob("run-*"), key=lambda d: int(d.name.split("-")[1])):
        outcomes = []
        for path in sorted(run_dir.glob("*.json"), key=lambda f: f.stat().st_mtime):
            verified, figures = read_json(path)
            outcomes.append(Outcome(path.stem, math.nan, 0, verified, figures))
        runs.append(outcomes)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [s for s in SCRIPTS if (s.default if args.only is None else s.name in args.only)]
    runs: list[list[Outcome]] = []
    statuses: list[int] = []
    if args.from_logs is not None:
        runs = kept_runs(args.from_logs)
        if not runs:
            print(f"no run-K/*.json under {args.from_logs}", file=sys.stderr)
            return 2
        statuses = [verdict(outcomes) for outcomes in runs]
        args.runs = len(runs)
    with tempfile.TemporaryDirectory(prefix="lt-targets-") as tmp:
        base = args.log_dir or Path(tmp)  # logs and figures (JSON) kept there
        for k in range(1, 0 if runs else args.runs + 1):
            if args.runs > 1:
                print(f"=== full run {k} of {args.runs}", flush=True)
            log_dir = base / f"run-{k}" if args.runs > 1 else base
            runs.append(one_run(chosen, args.sizes, log_dir))
            statuses.append(verdict(runs[-1]))
    if args.runs > 1:
        print(f"\nover {args.runs} full runs: median, range, runs that met the target")
        for spread in spreads(runs):
            figure = spread.first
            print(
                f"{figure.scenario:<52} {figure.metric:<18} {spread.median:>12,.3f} "
                f"{spread.range_text():>21} {spread.met_text():>5} {figure.rows or '':>9}"
            )
    if args.markdown:
        table = markdown(runs[0]) if args.runs == 1 else markdown_ranges(runs)
        args.markdown.write_text(table)
    return max(statuses)


if __name__ == "__main__":
    raise SystemExit(main())
