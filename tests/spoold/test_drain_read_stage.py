"""The drain's read stage alone, on a real spool file: rounds in FIFO order, one round
ahead of the send and never two, a failed read gives its groups back, a stop with an
empty spool ends the stream, and a read cut short by the stop is given back."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from spool_helpers import SpoolFactory, op

from spoold.forward import read as read_module
from spoold.forward.handoff import LocalFaults, Slot, StopClock
from spoold.forward.read import ReadStage
from spoold.forward.rounds import Round
from spoold.spool import Spool
from spoold.upstream.retry import Backoff


class Downstream:
    """The stages after the read, as the read stage sees them: idle here."""

    def sending(self) -> bool:
        return False

    async def sent(self) -> None:
        return None

    async def recorded(self) -> None:
        return None


def stage_for(spool: Spool, *, batch_size: int = 2) -> tuple[ReadStage, Slot[Round], StopClock]:
    slot: Slot[Round] = Slot()
    clock = StopClock()
    faults = LocalFaults(Backoff(base_s=0.01, cap_s=0.01), clock)

    async def idle() -> None:
        await asyncio.sleep(0.01)

    stage = ReadStage(
        spool,
        slot,
        clock,
        faults,
        Downstream(),
        idle,
        batch_size=batch_size,
        batch_max_bytes=1 << 20,
    )
    return stage, slot, clock


def seqs(round_: Round | None) -> list[int]:
    assert round_ is not None
    return [o["seq"] for o in round_.ops]


async def test_rounds_come_in_fifo_order_one_ahead_and_the_end_after_a_stop(
    make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool()
    for i in range(6):
        spool.put_group([op(i)])
    stage, slot, clock = stage_for(spool)
    reads: list[int] = []
    get_groups = spool.get_groups

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return get_groups(*args, **kwargs)

    monkeypatch.setattr(spool, "get_groups", counted)
    task = asyncio.create_task(stage.run())
    await asyncio.sleep(0.1)
    assert len(reads) == 1  # round 1 waits in the slot; round 2 is not read yet
    assert seqs(await asyncio.wait_for(slot.take(), 5)) == [0, 1]
    assert seqs(await asyncio.wait_for(slot.take(), 5)) == [2, 3]
    assert seqs(await asyncio.wait_for(slot.take(), 5)) == [4, 5]
    clock.stop_by(5.0)
    assert await asyncio.wait_for(slot.take(), 5) is None  # the end of the stream
    await asyncio.wait_for(task, 5)


async def test_a_failed_read_gives_its_groups_back_and_is_read_again(
    make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool()
    spool.put_group([op(1), op(2)])
    stage, slot, _ = stage_for(spool)
    pack = read_module.pack
    failures = {"left": 1}

    def failing_pack(*args: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("injected: packing failed")
        return pack(*args)

    monkeypatch.setattr(read_module, "pack", failing_pack)
    task = asyncio.create_task(stage.run())
    assert seqs(await asyncio.wait_for(slot.take(), 5)) == [1, 2]
    assert failures["left"] == 0
    assert stage._faults.error is None  # cleared by the read that succeeded
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_read_under_way_when_the_stage_is_cancelled_is_given_back(
    make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool()
    for i in range(3):
        spool.put_group([op(i)])
    stage, slot, _ = stage_for(spool, batch_size=10)
    entered, release = threading.Event(), threading.Event()
    pack = read_module.pack

    def slow_pack(*args: Any) -> Any:
        entered.set()
        release.wait(5)
        return pack(*args)

    monkeypatch.setattr(read_module, "pack", slow_pack)
    task = asyncio.create_task(stage.run())
    assert await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    release.set()
    groups = await asyncio.wait_for(stage.finish(), 5)
    assert len(groups) == 3  # the round read: slim groups, their ids for the nack
    assert slot.empty
    spool.nack(groups)
    assert [o["seq"] for g in spool.get_groups(10) for o in g.ops] == [0, 1, 2]
