"""Fixtures for the spool tests: spools in tmp_path that are always closed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory

from spoold.spool import Spool
from spoold.state.runs_index import RunsIndex


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_spool(spool_dir: Path) -> Iterator[SpoolFactory]:
    """Open spools (default: in spool_dir, no free-disk floor); close them all at the end."""
    opened: list[Spool] = []

    def factory(directory: Path | None = None, **kwargs: Any) -> Spool:
        kwargs.setdefault("min_free_disk_bytes", 0)
        spool = Spool(directory or spool_dir, **kwargs)
        opened.append(spool)
        return spool

    yield factory
    for spool in opened:
        spool.close()


@pytest.fixture
def indexes(tmp_path: Path) -> Iterator[tuple[RunsIndex, RunsIndex]]:
    """The accept path's runs-index connection and the drain's, on one file."""
    path = tmp_path / "index.sqlite"
    accepting = RunsIndex(path)
    draining = RunsIndex(path, synchronous="FULL", yields=True)
    yield accepting, draining
    draining.close()
    accepting.close()
