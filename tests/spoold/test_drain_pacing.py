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
BATCH = 500
ROUND_BYTES = 1 << 20
OP_BYTES = 300  # a small operation: a round of them is capped by BATCH, not bytes


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
    return await _rounds(monkeypatch, agents_writing=agents_writing, round_s=round_s)


async def _rounds(
    monkeypatch: pytest.MonkeyPatch,
    *,
    agents_writing: bool,
    round_s: float = ROUND_S,
    backlogs: list[int] | list[tuple[int, int]] | None = None,
    stats: DrainStats | None = None,
    rounds: int | None = None,
) -> list[float]:
    """Rounds through the send stage, each delivery having taken ``round_s``; the rests
    the stage asked for, each after its round's record (a consumer of the record slot).
    One round, or one per entry of ``backlogs``: the spool's depth after that round's
    record, in operations (of OP_BYTES each) or (operations, bytes); a round takes at
    most BATCH operations and ROUND_BYTES."""
    depths = iter(
        depth if isinstance(depth, tuple) else (depth, depth * OP_BYTES) for depth in backlogs or []
    )
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
        stats or DrainStats(),
        clock,
        LocalFaults(backoff, clock),
        gate,
        backoff=backoff,
        backlog=None if backlogs is None else lambda: next(depths),
        round_size=(BATCH, ROUND_BYTES),
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
    rounds = rounds or len(backlogs or [None])
    for _ in range(rounds):
        await asyncio.wait_for(inbox.put(Round([], RoundOps([]), [])), 5)
    await asyncio.wait_for(inbox.put(None), 5)  # the end of the stream
    await asyncio.wait_for(sending, 5)
    await asyncio.wait_for(recorder, 5)
    assert len(recorded) == rounds
    if agents_writing and backlogs is None:
        assert all(was_recorded == 1 for _, was_recorded in rests)  # the record came first
    assert next(depths, None) is None  # read once per round, after its record
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


@pytest.mark.parametrize(
    ("backlogs", "rested"),
    [
        # a backlog that shrinks round to round: every round rests
        ([90_000, 89_000, 88_000, 87_500], 4),
        # agents outrun the rested drain (a busy host): the first round of the spell
        # rests (nothing to compare), then none until the backlog is back down to the
        # depth of that last rest - a dip that stays above it is not enough
        ([90_000, 91_000, 92_500, 92_400, 93_000, 90_500, 90_000, 90_200], 2),
        # caught up (at most one round's worth left): rests even as it wobbles upward
        ([100, 300, BATCH, 200], 4),
        # just over a round and growing: no rest
        ([BATCH, BATCH + 1, BATCH + 2], 1),
        # the same depth: keeping up, rests
        ([5_000, 5_000, 5_000], 3),
        # a few large operations, more bytes than a round takes, growing: not caught up
        ([(10, 2 * ROUND_BYTES), (12, 3 * ROUND_BYTES), (14, 4 * ROUND_BYTES)], 1),
        # ... and within a round's bytes: caught up, rests
        ([(10, ROUND_BYTES // 4), (12, ROUND_BYTES // 3), (14, ROUND_BYTES // 2)], 3),
    ],
)
async def test_the_drain_rests_only_while_its_rested_pace_keeps_up(
    monkeypatch: pytest.MonkeyPatch, backlogs: list[int] | list[tuple[int, int]], rested: int
) -> None:
    """A spool that holds more after a round's record than after the last round that
    rested, while agents write, means the rested drain falls behind them: it goes on at
    once, until the backlog is back to that depth, or a busy host's backlog would grow
    until the disk is full."""
    stats = DrainStats()
    rests = await _rounds(monkeypatch, agents_writing=True, backlogs=backlogs, stats=stats)
    assert len(rests) == rested
    assert stats.rests_skipped == len(backlogs) - rested
    assert all(seconds >= ROUND_S * send_module.PACE_WHILE_ACCEPTING for seconds in rests)


async def test_a_quiet_spell_starts_a_new_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nobody writing there is no rest and no depth read; the next busy spell's first
    round rests, whatever the depth was in the spell before."""
    gate_writing = iter([True, False, True, True])
    monkeypatch.setattr(WriteGate, "urgent_within", lambda self, seconds: next(gate_writing))
    stats = DrainStats()
    # depths read after rounds 1, 3 and 4 (round 2 came while nobody wrote)
    rests = await _rounds(
        monkeypatch,
        agents_writing=True,
        backlogs=[90_000, 95_000, 96_000],
        stats=stats,
        rounds=4,
    )
    assert len(rests) == 2  # rounds 1 and 3: each the first of its busy spell
    assert stats.rests_skipped == 1  # round 4: the spool grew since round 3
    assert next(gate_writing, None) is None  # asked once per round


@pytest.mark.parametrize("agents_share", [0.4, 0.6, 0.72, 0.9, 0.97])
def test_agents_below_the_full_pace_never_grow_the_backlog_for_good(
    agents_share: float,
) -> None:
    """A model of the drain under steady writes: each round takes BATCH operations in
    time t; agents add ``agents_share`` x BATCH in each t, during the round and during
    its rest. Below the rested pace (half) every round rests; above it, but below the
    full pace, the rests are skipped often enough that the backlog stays bounded (a rule
    comparing with the round before alternated rest and no rest, ~2/3 of the full pace:
    at 0.72 the backlog grew by ~24,000 operations in 600 rounds)."""
    stats = DrainStats()
    depth = start = 20_000
    rested_last = False

    def backlog() -> tuple[int, int]:
        return depth, depth * OP_BYTES

    clock = StopClock()
    backoff = Backoff(base_s=1.0, cap_s=1.0)
    sender = SendStage(
        Slot(),
        Slot(),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        stats,
        clock,
        LocalFaults(backoff, clock),
        WriteGate(),
        backoff=backoff,
        backlog=backlog,
        round_size=(BATCH, ROUND_BYTES),
    )
    written = agents_share * BATCH
    peak = depth
    rests = 0
    for _ in range(600):
        depth = max(0, round(depth + written - BATCH + (written if rested_last else 0)))
        peak = max(peak, depth)
        rested_last = sender._keeping_up()
        rests += rested_last
    if agents_share < 0.5:
        assert rests == 600
    else:
        assert rests < 600
    assert depth <= start + BATCH  # not growing for good
    assert peak <= start + 2 * BATCH
