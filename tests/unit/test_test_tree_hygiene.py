"""Rules of the test tree that a full run depends on but a single directory's run hides:
tests/ has no packages, so every test module and helper is imported by its basename."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_module_imports_a_conftest_by_name() -> None:
    # Several directories have a conftest.py: "from conftest import X" gets whichever was
    # imported first in the run (a browser test once got tests/spoold's).
    pattern = re.compile(r"^\s*(from\s+conftest\s+import|import\s+conftest\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_module_basenames_are_unique_outside_conftest() -> None:
    names = Counter(path.name for path in TESTS.rglob("*.py") if path.name != "conftest.py")
    assert [name for name, count in names.items() if count > 1] == []
