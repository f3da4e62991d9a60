"""While agents write, the drain rests between rounds (as long as the round took), so the
accept path gets the disk and the GIL; with no agent writing it never rests. Measured: p99
of 1,000 creates/s offered during a drain 178 -> 44 ms (bench/spoold_bench.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from spool_helpers import SpoolFactory, op

from spoold.forward import drainer as drainer_module
from spoold.forward.drainer import Drainer, _Delivered, _Prepared
from spoold.spool.writegate import WriteGate
from spoold.upstream.retry import Backoff

ROUND_S = 0.4


@pytest.mark.parametrize(("round_s", "rest_s"), [(ROUND_S, ROUND_S), (600.0, 1.0)])
async def test_a_round_that_took_long_rests_at_most_a_second(
    make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch, round_s: float, rest_s: float
) -> None:
    """A round retried through a ten-minute outage does not hold the backlog back another
    ten minutes while agents write: the rest is capped at MAX_REST_S."""
    rests = await _one_round(make_spool, monkeypatch, agents_writing=True, round_s=round_s)
    assert len(rests) == 1
    assert rest_s <= rests[0] < rest_s + 0.5
    assert drainer_module.MAX_REST_S == 1.0


async def _one_round(
    make_spool: SpoolFactory,
    monkeypatch: pytest.MonkeyPatch,
    *,
    agents_writing: bool,
    round_s: float = ROUND_S,
) -> list[float]:
    """One drain round whose delivery took ``round_s``; the rests the drainer asked for."""
    spool = make_spool()
    spool.put_group([op(1), op(2)])
    gate = WriteGate()
    if agents_writing:
        gate.last_urgent = time.monotonic()  # the accept path has just committed
    drainer = Drainer(
        spool,
        None,  # type: ignore[arg-type]  # the round's delivery and record are replaced here
        SimpleNamespace(gate=gate),  # type: ignore[arg-type]  # only its gate is read
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        batch_size=10,
        batch_max_bytes=1 << 20,
        backoff=Backoff(base_s=1.0, cap_s=1.0),
    )
    recorded: list[_Delivered] = []
    rests: list[float] = []

    async def delivered_long_ago(prepared: _Prepared) -> _Delivered:
        return _Delivered(
            prepared.groups, ["ev-1", "ev-2"], frozenset(), time.perf_counter() - round_s
        )

    def record(delivered: _Delivered) -> None:
        recorded.append(delivered)
        drainer._delivered = None

    async def rest(seconds: float) -> None:
        rests.append(seconds)

    monkeypatch.setattr(drainer, "_forward", delivered_long_ago)
    monkeypatch.setattr(drainer, "_record", record)
    monkeypatch.setattr(drainer, "_sleep", rest)

    assert await drainer._round()
    if agents_writing:
        assert recorded  # waited for: the record comes before the rest
    await drainer._finish_recording()  # without agents, the record goes on in the background
    assert len(recorded) == 1
    await drainer._take_prefetched()  # the read-ahead of the next round (an empty one)
    spool.close()
    return rests


@pytest.mark.parametrize("agents_writing", [True, False])
async def test_the_drain_rests_between_rounds_only_while_agents_write(
    make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch, agents_writing: bool
) -> None:
    rests = await _one_round(make_spool, monkeypatch, agents_writing=agents_writing)
    if agents_writing:
        assert len(rests) == 1
        assert rests[0] >= ROUND_S * drainer_module.PACE_WHILE_ACCEPTING
        assert rests[0] < ROUND_S * drainer_module.PACE_WHILE_ACCEPTING + 0.5
    else:
        assert rests == []
