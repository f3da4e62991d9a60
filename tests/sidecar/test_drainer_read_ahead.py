"""A read-ahead that fails after it took groups from the spool gives them back: nothing is
stranded in flight, everything is delivered once the server answers."""

from __future__ import annotations

from typing import Any

import pytest
from sidecar_helpers import make_run

from spoold.forward import read as read_module


async def test_a_failed_read_ahead_does_not_strand_its_groups(
    dead_url: str, make_sidecar: Any, start_central: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packing the second (read-ahead) round into batches raises once while the server is
    down; once the server is up every run is delivered and the spool drains to zero."""
    pack = read_module.pack
    calls = {"with_snapshots": 0}

    def failing_pack(snapshots: Any, *args: Any) -> Any:
        if snapshots:
            calls["with_snapshots"] += 1
            if calls["with_snapshots"] == 2:  # the round read ahead while the first is retried
                raise MemoryError("injected: read-ahead failed")
        return pack(snapshots, *args)

    monkeypatch.setattr(read_module, "pack", failing_pack)
    sidecar = await make_sidecar(dead_url, batch_size=1)
    runs = [make_run() for _ in range(4)]
    for run in runs:
        assert (await sidecar.create(run)).status == 201
    port = int(dead_url.rsplit(":", 1)[1])
    central = await start_central(port)
    await sidecar.wait_drained(timeout_s=15)
    assert calls["with_snapshots"] >= 2, "the fault was never injected"
    assert (await sidecar.health())["spool"]["depth"] == 0
    for run in runs:
        assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 200
