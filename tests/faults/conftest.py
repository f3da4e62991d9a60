"""Fault tests: real daemons, real files, real sockets on 127.0.0.1.

``tests/integration`` holds the process helpers (``daemons``); it is put on
``sys.path`` here so that ``procs`` (next to this file) can build on them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

from procs import Reaper  # noqa: E402


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """Every daemon a test starts is registered here and stopped by PID at teardown."""
    procs = Reaper()
    try:
        yield procs
    finally:
        procs.stop_all()
