"""While agents write, the drain rests between rounds (PACE_WHILE_ACCEPTING times as long
as the round took, at most MAX_REST_S), so the accept path gets the disk and the GIL; with
no agent writing it never rests. Measured: p99 of 1,000 creates/s offered during a drain
178 -> 44 ms with the first rests (bench/spoold_bench.py; the README has the figures)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from spoold.forward import send as send_module
from spoold.forward.handoff import LocalFaults, Slot, StopClock
from spoold.forward.rounds import Delivered, DrainStats, Round, RoundOps
from spoold.forward.send import SendStage
from spoold.spool.writegate import WriteGate
from spoold.upstream.retry import Backoff

ROUND_S = 0.4


@pytest.mark.parametrize(("round_s", "rest_s"), [(ROUND_S, ROUND_S), (600.0, 1.0)])
async def test_a_round_that_took_long_rests_at_most_a_second(
    monkeypatch: pytest.MonkeyPatch, round_s: float, rest_s: float
) -> None:
    """A round retried through a ten-minute outage does not hold the backlog back another
    ten minutes while agents write: the rest is capped at MAX_REST_S."""
    rests = await _one_round(monkeypatch, agents_writing=True, round_s=round_s)
    assert len(rests) == 1
    assert send_module.MAX_REST_S == 1.0
    assert rest_s <= rests[0] <= send_module.MAX_REST_S  # the cap, not a timing


async def _one_round(
    monkeypatch: pytest.MonkeyPatch, *, agents_writing: bool, round_s: float = ROUND_S
) -> list[float]:
    """One round through the send stage, whose delivery took ``round_s``; the rests the
    stage asked for, each after the round's record (a consumer of the record slot)."""
    gate = WriteGate()
    if agents_writing:
        gate.last_urgent = time.monotonic()  # the accept path has just committed
    inbox: Slot[Round] = Slot()
    out: Slot[Delivered] = Slot()
    clock = StopClock()
    backoff = Backoff(base_s=1.0, cap_s=1.0)
    sender = SendStage(
        inbox,
        out,
        cast(Any, None),  # the round's delivery is replaced here
        cast(Any, None),
        cast(Any, None),
        DrainStats(),
        clock,
        LocalFaults(backoff, clock),
        gate,
        backoff=backoff,
    )
    recorded: list[Delivered] = []
    rests: list[tuple[float, int]] = []

    async def delivered_long_ago(round_: Round) -> Delivered:
        return Delivered(
            round_.groups, ["ev-1", "ev-2"], frozenset(), time.perf_counter() - round_s
        )

    async def rest(seconds: float) -> None:
        rests.append((seconds, len(recorded)))

    async def record() -> None:
        while (delivered := await out.hold()) is not None:
            await asyncio.sleep(0.05)  # the record takes a moment
            recorded.append(delivered)
            out.release()
        out.release()

    monkeypatch.setattr(sender, "forward", delivered_long_ago)
    monkeypatch.setattr(clock, "sleep", rest)
    recorder = asyncio.create_task(record())
    sending = asyncio.create_task(sender.run())
    await asyncio.wait_for(inbox.put(Round([], RoundOps([]), [])), 5)
    await asyncio.wait_for(inbox.put(None), 5)  # the end of the stream
    await asyncio.wait_for(sending, 5)
    await asyncio.wait_for(recorder, 5)
    assert len(recorded) == 1
    if agents_writing:
        assert all(was_recorded == 1 for _, was_recorded in rests)  # the record came first
    return [seconds for seconds, _ in rests]


@pytest.mark.parametrize("agents_writing", [True, False])
async def test_the_drain_rests_between_rounds_only_while_agents_write(
    monkeypatch: pytest.MonkeyPatch, agents_writing: bool
) -> None:
    rests = await _one_round(monkeypatch, agents_writing=agents_writing)
    if agents_writing:
        assert len(rests) == 1
        assert rests[0] >= ROUND_S * send_module.PACE_WHILE_ACCEPTING
        assert rests[0] < ROUND_S * send_module.PACE_WHILE_ACCEPTING + 0.5
    else:
        assert rests == []
