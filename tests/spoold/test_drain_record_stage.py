"""The drain's record stage alone, on real spool and runs-index files: a round is settled
before it is acked, the slot is freed (and the next round handed on) only once it is
both, rounds are recorded in the order handed on, a failed ack is retried without
settling (or sending) again, and a round left in the slot at a stop is finished."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from spool_helpers import SpoolFactory, accept, disk_full
from spool_helpers import create_run as create

from spoold.forward.handoff import LocalFaults, Slot, StopClock
from spoold.forward.record import RecordStage
from spoold.forward.rounds import Delivered, DrainStats
from spoold.spool import Spool
from spoold.state.ledger import Counts, Ledger
from spoold.state.runs_index import RunsIndex
from spoold.upstream.retry import Backoff


async def delivered_rounds(
    spool: Spool, index: RunsIndex, rounds: int, per_round: int
) -> list[Delivered]:
    names = [f"r{n}" for n in range(rounds * per_round)]
    await accept(spool, index, *(create(name) for name in names))
    out = []
    for _ in range(rounds):
        groups = spool.get_groups(per_round)
        event_ids = [o["event_id"] for g in groups for o in g.ops]
        out.append(Delivered(groups, event_ids, frozenset(), time.perf_counter()))
    return out


def stage_for(
    spool: Spool, index: RunsIndex, ledger: Ledger
) -> tuple[RecordStage, Slot[Delivered], DrainStats, LocalFaults]:
    slot: Slot[Delivered] = Slot()
    stats = DrainStats()
    faults = LocalFaults(Backoff(base_s=0.01, cap_s=0.01), StopClock())
    return RecordStage(slot, spool, index, ledger, stats, faults), slot, stats, faults


async def test_rounds_are_settled_then_acked_in_order_before_the_next_is_handed_on(
    make_spool: SpoolFactory, indexes: tuple[RunsIndex, RunsIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    accepting, draining = indexes
    spool = make_spool()
    rounds = await delivered_rounds(spool, accepting, rounds=3, per_round=2)
    ledger = Ledger(Counts(accepted=6, queued=6))
    stage, slot, stats, _ = stage_for(spool, draining, ledger)
    steps: list[tuple[str, list[int]]] = []
    settle_slice, ack = draining.settle_slice, spool.ack

    def recording_slice(*args: Any, **kwargs: Any) -> None:
        steps.append(("settle", args[2].ids))
        settle_slice(*args, **kwargs)

    def recording_ack(groups: Any) -> None:
        steps.append(("ack", [g.id for g in groups]))
        ack(groups)

    monkeypatch.setattr(draining, "settle_slice", recording_slice)
    monkeypatch.setattr(spool, "ack", recording_ack)
    task = asyncio.create_task(stage.run())
    for n, delivered in enumerate(rounds):
        await asyncio.wait_for(slot.put(delivered), 5)  # waits for the previous record
        # The previous round was settled and acked before this put returned (this one's
        # record runs in a thread and may be done already by the time we look).
        assert len([s for s in steps if s[0] == "ack"]) >= n
    await asyncio.wait_for(slot.put(None), 5)
    await asyncio.wait_for(task, 5)
    ids = [[g.id for g in delivered.groups] for delivered in rounds]
    assert steps == [step for group in ids for step in (("settle", group), ("ack", group))]
    assert spool.stats().depth_ops == 0
    assert ledger.snapshot() == Counts(accepted=6, forwarded=6, queued=0)
    assert stats.operations_forwarded == 6


async def test_a_failed_ack_is_retried_without_settling_again(
    make_spool: SpoolFactory, indexes: tuple[RunsIndex, RunsIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack hits a full disk twice: /health shows it, the next put waits, and the ack
    goes through on a retry; the settle ran once (each operation counted once)."""
    accepting, draining = indexes
    spool = make_spool()
    (delivered,) = await delivered_rounds(spool, accepting, rounds=1, per_round=3)
    ledger = Ledger(Counts(accepted=3, queued=3))
    stage, slot, stats, faults = stage_for(spool, draining, ledger)
    settles: list[int] = []
    settle_slice, ack = draining.settle_slice, spool.ack
    failures = {"left": 2}

    def counted_slice(*args: Any, **kwargs: Any) -> None:
        settles.append(1)
        settle_slice(*args, **kwargs)

    def flaky_ack(groups: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise disk_full()
        ack(groups)

    monkeypatch.setattr(draining, "settle_slice", counted_slice)
    monkeypatch.setattr(spool, "ack", flaky_ack)
    task = asyncio.create_task(stage.run())
    await slot.put(delivered)
    for _ in range(200):  # bounded: the first failure comes at once
        if faults.error is not None:
            break
        await asyncio.sleep(0.005)
    assert faults.error is not None
    assert "full" in faults.error
    await asyncio.wait_for(slot.put(None), 5)  # once the round is recorded
    await asyncio.wait_for(task, 5)
    assert failures["left"] == 0
    assert settles == [1]
    assert faults.error is None
    assert spool.stats().depth_ops == 0
    assert stats.operations_forwarded == 3
    assert draining.counters()["forwarded"] == 3


async def test_a_round_left_in_the_slot_at_a_stop_is_finished(
    make_spool: SpoolFactory, indexes: tuple[RunsIndex, RunsIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    accepting, draining = indexes
    spool = make_spool()
    (delivered,) = await delivered_rounds(spool, accepting, rounds=1, per_round=2)
    stage, slot, _, faults = stage_for(spool, draining, Ledger(Counts(accepted=2, queued=2)))
    ack = spool.ack
    failures = {"left": 1}

    def flaky_ack(groups: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise disk_full()
        ack(groups)

    monkeypatch.setattr(spool, "ack", flaky_ack)
    faults._backoff = Backoff(base_s=60.0, cap_s=60.0)  # the retry would come after the stop
    task = asyncio.create_task(stage.run())
    await slot.put(delivered)
    for _ in range(200):
        if faults.error is not None:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert slot.held is delivered
    await asyncio.wait_for(stage.finish(), 5)
    assert slot.empty
    assert spool.stats().depth_ops == 0
    assert draining.counters()["forwarded"] == 2
