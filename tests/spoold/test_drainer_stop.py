"""A stop that comes while the drainer backs off after a local failure ends it cleanly:
reaching the deadline is how a stop ends, not a crash (no ``Stopped`` escaping ``run``,
no ``drainer_crashed`` log at every such shutdown)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from spool_helpers import SpoolFactory

from spoold.forward.drainer import Drainer
from spoold.forward.rounds import Round
from spoold.spool.writegate import WriteGate
from spoold.upstream.retry import Backoff


async def test_a_stop_during_the_backoff_after_a_local_failure_ends_run_cleanly(
    make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    drainer = Drainer(
        make_spool(),
        None,  # type: ignore[arg-type]  # the round fails before any of these is used
        SimpleNamespace(gate=WriteGate()),  # type: ignore[arg-type]  # only its gate is read
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        batch_size=10,
        batch_max_bytes=1 << 20,
        backoff=Backoff(base_s=5.0, cap_s=5.0),
    )
    failures = []

    def failing_read() -> Round:
        failures.append(1)
        raise OSError("injected: local state unreadable")

    monkeypatch.setattr(drainer.reader, "read_round", failing_read)
    task = asyncio.create_task(drainer.run())
    for _ in range(200):  # bounded: the first failure comes at once
        if failures:
            break
        await asyncio.sleep(0.01)
    assert failures, "the round never failed"
    drainer.stop_by(0.3)
    await asyncio.wait_for(task, 5)  # raises if run() ended with an exception
    assert drainer.local_error is not None
    assert "injected" in drainer.local_error
