"""The one-slot hand-off between the drain's stages: order, and never more than one ahead."""

from __future__ import annotations

import asyncio

from spoold.forward.handoff import Slot


async def test_items_leave_in_the_order_they_entered_with_at_most_one_waiting() -> None:
    slot: Slot[int] = Slot()
    produced: list[int] = []

    async def produce() -> None:
        for n in range(5):
            await slot.put(n)
            produced.append(n)
        await slot.put(None)

    producer = asyncio.create_task(produce())
    await asyncio.sleep(0.02)
    assert produced == [0]  # the second put waits: the slot holds one item
    taken: list[int] = []
    while (item := await asyncio.wait_for(slot.take(), 5)) is not None:
        taken.append(item)
        assert len(produced) - len(taken) <= 1
        await asyncio.sleep(0)
    await asyncio.wait_for(producer, 5)
    assert taken == [0, 1, 2, 3, 4]


async def test_a_held_item_keeps_the_producer_waiting_until_released() -> None:
    slot: Slot[str] = Slot()
    await slot.put("round 1")
    assert await slot.hold() == "round 1"
    second = asyncio.create_task(slot.put("round 2"))
    await asyncio.sleep(0.02)
    assert not second.done()  # the consumer is still working on round 1
    assert slot.held == "round 1"
    slot.release()
    await asyncio.wait_for(second, 5)
    assert slot.held == "round 2"
    assert not slot.empty
