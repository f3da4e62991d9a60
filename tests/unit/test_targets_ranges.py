"""bench/targets.py quotes a figure over several full runs as its median and range."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from report import Figure, write_json
from targets import Outcome, main, markdown_ranges, parse_args, spreads


def _run(p99: float, rate: float, *, extra: bool = False) -> list[Outcome]:
    figures = [
        Figure("lifecycle c=32", "p99 ms", p99, 25.0, higher_is_better=False, rows=100_000),
        Figure("creates c=32", "creates/s", rate, 3000.0, rows=100_000),
        Figure("ceiling", "creates/s", 7000.0),
    ]
    if extra:
        figures.append(Figure("only in one run", "ms", 1.0, 2.0, higher_is_better=False))
    return [Outcome("server_bench rows=100,000", 60.0, 0, True, figures)]


def test_each_figure_gets_its_median_range_and_runs_that_met_it() -> None:
    runs = [_run(22.0, 3100.0), _run(31.0, 2900.0, extra=True), _run(24.0, 3050.0)]
    by_key = {(s.first.scenario, s.first.metric): s for s in spreads(runs)}
    p99 = by_key[("lifecycle c=32", "p99 ms")]
    assert (p99.median, p99.range_text(), p99.met_text()) == (24.0, "22.0-31.0", "2/3")
    rate = by_key[("creates c=32", "creates/s")]
    assert (rate.median, rate.range_text(), rate.met_text()) == (3050.0, "2,900-3,100", "2/3")
    ceiling = by_key[("ceiling", "creates/s")]
    assert (ceiling.range_text(), ceiling.met_text()) == ("7,000", "")
    assert by_key[("only in one run", "ms")].met_text() == "1/1"
    assert list(by_key)[:3] == [
        ("lifecycle c=32", "p99 ms"),
        ("creates c=32", "creates/s"),
        ("ceiling", "creates/s"),
    ]


def test_the_table_marks_a_target_missed_in_any_run() -> None:
    table = markdown_ranges([_run(22.0, 3100.0), _run(31.0, 3200.0), _run(24.0, 3050.0)])
    lines = table.splitlines()
    assert lines[0].startswith("| scenario | rows | metric | median | range (3 runs)")
    assert (
        "| lifecycle c=32 | 100,000 | p99 ms | 24.0 | 22.0-31.0 | 25 | 0.96x | **2/3** |" in lines
    )
    assert (
        "| creates c=32 | 100,000 | creates/s | 3,100 | 3,050-3,200 | 3000 | 1.03x | 3/3 |" in lines
    )


@pytest.mark.parametrize("runs", ["0", "21", "-1"])
def test_runs_out_of_bounds_are_refused(runs: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--runs", runs])
    assert stopped.value.code == 2


def test_the_table_again_from_a_kept_log_dir(tmp_path: Path) -> None:
    """--from-logs runs nothing: it reads run-K/*.json back and writes the same table as
    the runs did; a run whose figures missed a target still says so in its exit status."""
    for k, (p99, rate) in enumerate([(22.0, 3100.0), (31.0, 3200.0), (24.0, 3050.0)], 1):
        run_dir = tmp_path / "logs" / f"run-{k}"
        run_dir.mkdir(parents=True)
        write_json(run_dir / "server_bench-100000.json", _run(p99, rate)[0].figures, verified=True)
    out = tmp_path / "perf.md"
    status = main(["--from-logs", str(tmp_path / "logs"), "--markdown", str(out)])
    assert status == 1  # run 2's p99 of 31 ms missed its 25 ms target
    expected = markdown_ranges([_run(22.0, 3100.0), _run(31.0, 3200.0), _run(24.0, 3050.0)])
    assert out.read_text() == expected


def test_from_logs_without_runs_is_an_error(tmp_path: Path) -> None:
    assert main(["--from-logs", str(tmp_path), "--markdown", str(tmp_path / "perf.md")]) == 2
    assert not (tmp_path / "perf.md").exists()
