"""Figures with their targets, in one JSON shape every benchmark script can write.

A script given ``--json PATH`` writes ``{"script", "argv", "verified", "figures": [...]}``
there; ``bench/targets.py`` runs the scripts and prints every figure next to its target.
A figure's ``ratio`` is value / target, so 1.0 is "exactly on target"; whether above or
below is good is ``higher_is_better``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True)
class Figure:
    """One measured number, where it was measured, and what it should be."""

    scenario: str  # e.g. "server create+PATCH c=32, 60 s"
    metric: str  # e.g. "p99 ms"
    value: float
    target: float | None = None  # None: shown for information (a ceiling, a floor)
    higher_is_better: bool = True
    rows: int | None = None  # rows in the database / ops in the backlog, when it matters
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.target is None or self.target == 0:
            return None
        return self.value / self.target

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target


def write_json(path: Path, figures: list[Figure], *, verified: bool) -> None:
    """Write the figures of one script run (``verified``: every acknowledged write found)."""
    document: dict[str, Any] = {
        "script": Path(sys.argv[0]).name,
        "argv": sys.argv[1:],
        "verified": verified,
        "figures": [asdict(figure) for figure in figures],
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


def read_json(path: Path) -> tuple[bool, list[Figure]]:
    """The figures a script wrote, and whether it verified its writes."""
    document = orjson.loads(path.read_bytes())
    return bool(document["verified"]), [Figure(**item) for item in document["figures"]]


def format_row(figure: Figure) -> str:
    """One line: scenario, metric, value, target and ratio, for a terminal."""
    target = "" if figure.target is None else f"{figure.target:g}"
    ratio = "" if figure.ratio is None else f"{figure.ratio:.2f}x"
    verdict = {True: "ok", False: "MISSED", None: ""}[figure.met]
    rows = "" if figure.rows is None else f"{figure.rows:,}"
    return (
        f"{figure.scenario:<52} {figure.metric:<18} {figure.value:>12,.3f} "
        f"{target:>10} {ratio:>7} {verdict:<6} {rows:>9} {figure.note}"
    )
