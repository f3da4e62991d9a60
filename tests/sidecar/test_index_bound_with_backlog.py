"""The runs index's byte bound (``SPOOLD_INDEX_MAX_MB``) is over delivered runs: a backlog
whose own rows pass it never makes the pruner forget the delivered runs it has room for
(it used to: every pass forgot them by the hundred thousand on a 1M-op backlog, without
ever meeting the bound, and a re-sent delivered run was answered ``created``)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sidecar_helpers import FakeUpstream, answer, make_run, wait_until

from spoold import app as spoold_app
from spoold.state.runs_index import RunsIndex
from spoold.state.storage import INDEX_FILE

DELIVERED = 300
BACKLOG = 40
#: Each backlog run's metrics: 40 of them take ~2.6 MB of spool, past a 1 MiB bound.
METRICS_BYTES = 64 * 1024


async def test_a_backlog_past_the_bound_keeps_the_delivered_runs(
    fake: FakeUpstream, make_sidecar: Any, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs delivered, then a backlog whose rows alone pass a 1 MiB bound: prune passes
    forget none of the delivered runs, and a re-sent one is still answered duplicate."""
    passes: list[int] = []
    prune = RunsIndex.prune

    def counted_prune(index: RunsIndex, **kwargs: Any) -> int:
        removed = prune(index, **kwargs)
        passes.append(removed)
        return removed

    monkeypatch.setattr(spoold_app, "PRUNE_EVERY_S", 0.05)
    monkeypatch.setattr(RunsIndex, "prune", counted_prune)
    sidecar = await make_sidecar(fake.url, index_max_mb=1)
    try:
        delivered = [make_run() for _ in range(DELIVERED)]
        for start in range(0, DELIVERED, 100):
            reply = await sidecar.post("/api/v1/runs/batch", json=delivered[start : start + 100])
            assert reply.status == 200, reply.body
        await sidecar.wait_drained()

        fake.batch_default = answer(503, {"detail": "down for the test"})
        blob = {"blob": "m" * METRICS_BYTES}
        for _ in range(BACKLOG):
            assert (await sidecar.create(make_run(metrics_json=blob))).status == 201
        health = await sidecar.health()
        assert health["spool"]["bytes"] > 2 * 1024 * 1024, health["spool"]
        with contextlib.closing(sqlite3.connect(spool_dir / INDEX_FILE)) as look:
            page_size, pages, free = (
                look.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("page_size", "page_count", "freelist_count")
            )
        assert (pages - free) * page_size > 2 * 1024 * 1024  # the index is past its bound

        before = len(passes)

        async def three_passes() -> bool:
            return len(passes) >= before + 3

        await wait_until(three_passes, "three prune passes over the backlog")
        assert passes[before:] == [0] * len(passes[before:])
        for run in (delivered[0], delivered[-1]):
            again = await sidecar.post("/api/v1/runs", json=run)
            assert (again.status, again.body["status"]) == (201, "duplicate"), again.body
    finally:
        await sidecar.close()
