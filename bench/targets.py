"""Every speed target of the project in one run: each benchmark script, at each size.

    python bench/targets.py                          # full run: 100,000 and 1,000,000 rows
    python bench/targets.py --sizes 20000 --only list_cpu ops_reads   # a quick look
    python bench/targets.py --markdown perf.md       # also write the README's table

Runs the scripts one after another (never two at once: the machine has two cores and
each script measures a live daemon), each with ``--json`` into a temp dir, a script
marked *sized* once per ``--sizes`` value with ``--rows N`` (rows prefilled in the
database, or operations in the spool's backlog), the others once. Then prints every
figure with its target and ratio, and whether every script verified that every write
it got acknowledged was stored. Exit status 0 if every target was met and every script
verified its writes, 1 if a target was missed, 2 if a script failed or did not verify.
"""

from __future__ import annotations

import argparse
import os
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--only", nargs="+", choices=[s.name for s in SCRIPTS], help="run only these scripts"
    )
    parser.add_argument("--markdown", type=Path, help="write the README table here")
    parser.add_argument("--log-dir", type=Path, help="keep the scripts' logs here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [s for s in SCRIPTS if (s.default if args.only is None else s.name in args.only)]
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lt-targets-") as tmp:
        log_dir = args.log_dir or Path(tmp)  # logs and figures (JSON) kept there
        log_dir.mkdir(parents=True, exist_ok=True)
        for script in chosen:
            for rows in args.sizes if script.sized else [None]:
                outcomes.append(run_script(script, rows, log_dir, log_dir))
    print()
    print(f"one run, {time.monotonic() - started:.0f} s, {os.cpu_count()} cores")
    header = f"{'scenario':<52} {'metric':<18} {'value':>12} {'target':>10} {'ratio':>7}"
    print(f"{header} {'':<6} {'rows':>9} note")
    for outcome in outcomes:
        for figure in outcome.figures:
            print(format_row(figure))
    failed = [o.label for o in outcomes if o.returncode not in (0, 1) or not o.verified]
    missed = [f for o in outcomes for f in o.figures if f.met is False]
    print()
    for outcome in outcomes:
        print(f"{outcome.label}: {outcome.seconds:.0f} s, verified={outcome.verified}")
    print(f"targets missed: {len(missed)}; scripts failed or unverified: {failed or 'none'}")
    if args.markdown:
        args.markdown.write_text(markdown(outcomes))
    if failed:
        return 2
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
