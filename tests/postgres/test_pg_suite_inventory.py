"""Every test module of tests/server is decided: run on both backends, SQLite-only with a
reason, or the dashboard's (``server_suite``); and the modules run again on PostgreSQL
share no test or fixture name (one would hide the other in ``test_pg_server_suite``)."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import server_suite

SERVER_TESTS = Path(__file__).resolve().parents[1] / "server"
SUITE = Path(__file__).resolve().parent / "test_pg_server_suite.py"
DASHBOARD_SUITE = Path(__file__).resolve().parent / "test_pg_dashboard_pages.py"


def test_every_server_test_module_is_classified_once() -> None:
    modules = sorted(path.stem for path in SERVER_TESTS.glob("test_*.py"))
    decided = Counter(
        [
            *server_suite.ON_BOTH,
            *server_suite.SQLITE_ONLY_MODULES,
            *server_suite.DASHBOARD_MODULES,
        ]
    )
    assert [name for name, n in decided.items() if n > 1] == []
    assert sorted(decided) == modules
    assert all(reason.strip() for reason in server_suite.SQLITE_ONLY_MODULES.values())


def test_the_suite_collects_exactly_the_modules_on_both() -> None:
    imported = re.findall(r"^from (test_\w+) import \*", SUITE.read_text(), re.MULTILINE)
    assert imported == sorted(server_suite.ON_BOTH)


def test_the_dashboard_suite_collects_exactly_the_dashboard_modules() -> None:
    imported = re.findall(r"^from (test_\w+) import \*", DASHBOARD_SUITE.read_text(), re.MULTILINE)
    assert imported == sorted(server_suite.DASHBOARD_MODULES)


def _names(module: str) -> set[str]:
    """The test functions and fixtures a module defines at its top level."""
    tree = ast.parse((SERVER_TESTS / f"{module}.py").read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        fixture = any("fixture" in ast.unparse(d) for d in node.decorator_list)
        if fixture or node.name.startswith("test_"):
            names.add(node.name)
    return names


def test_modules_run_again_share_no_test_or_fixture_name() -> None:
    seen = Counter(name for module in server_suite.ON_BOTH for name in _names(module))
    assert [name for name, n in seen.items() if n > 1] == []


def test_each_sqlite_only_test_names_a_test_that_exists() -> None:
    """A renamed test must not leave a stale entry that silently matches nothing."""
    for pattern, reason in server_suite.SQLITE_ONLY_TESTS.items():
        module, name = pattern.split("::")
        assert module in server_suite.ON_BOTH, pattern
        assert name.split("[")[0] in _names(module), pattern
        assert reason.strip(), pattern
