"""The hand-off between the event loop and the accept thread: one wake-up per group.

A write waiting for the spool costs the loop a wake-up when it is answered. Answering a
group of N writes with N ``call_soon_threadsafe`` calls (N writes to the loop's
self-pipe) spent a noticeable share of spoold's CPU per write; a group is answered with
one call per event loop, and still only after its spool commit.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory

from spoold.accept.acceptor import Acceptor
from spoold.spool import SpoolClosedError
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex


def create(name: str) -> dict[str, Any]:
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}


async def test_a_group_is_answered_with_one_loop_wakeup_after_its_commit(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, index, ledger = make_spool(), RunsIndex(tmp_path / "index.sqlite"), Ledger()
    acceptor = Acceptor(spool, index, ledger, window_s=0.05, max_group=512)
    loop = asyncio.get_running_loop()
    wakeups: list[int] = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakeups.append(spool.stats().depth_ops)  # what is durable when the answer is sent
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    acceptor.start()
    try:
        results = await asyncio.gather(*(acceptor.submit(create(f"e{i}")) for i in range(64)))
    finally:
        monkeypatch.setattr(loop, "call_soon_threadsafe", real)
        await acceptor.close()
    index.close()
    assert [r.outcome for r in results] == ["created"] * 64
    assert acceptor.stats.operations == 64
    assert len(wakeups) == acceptor.stats.groups  # one per group, not one per write
    assert wakeups[-1] == 64
    assert all(depth > 0 for depth in wakeups)
    assert ledger.snapshot().accepted == 64


async def test_writes_after_close_are_refused_and_earlier_ones_answered(
    tmp_path: Path, make_spool: SpoolFactory
) -> None:
    spool, index = make_spool(), RunsIndex(tmp_path / "index.sqlite")
    acceptor = Acceptor(spool, index, Ledger(), window_s=0.05)
    acceptor.start()
    pending = [asyncio.ensure_future(acceptor.submit(create(f"e{i}"))) for i in range(20)]
    await asyncio.sleep(0)  # every submit has handed its write over
    await acceptor.close()
    results = await asyncio.gather(*pending)
    with pytest.raises(SpoolClosedError):
        await acceptor.submit(create("late"))
    index.close()
    assert [r.outcome for r in results] == ["created"] * 20
    assert spool.stats().depth_ops == 20


async def test_a_caller_cancelled_while_its_write_commits_leaves_the_group_whole(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request cancelled while it waits (its client went away) is not answered, but its
    write is committed with its group, the others are answered, and the thread goes on."""
    spool, index, ledger = make_spool(), RunsIndex(tmp_path / "index.sqlite"), Ledger()
    acceptor = Acceptor(spool, index, ledger)
    putting, go_on = threading.Event(), threading.Event()
    real_put = spool.put_encoded

    def held_put(*args: Any, **kwargs: Any) -> int:
        putting.set()
        go_on.wait(10)
        return real_put(*args, **kwargs)

    monkeypatch.setattr(spool, "put_encoded", held_put)
    acceptor.start()
    try:
        writes = [asyncio.ensure_future(acceptor.submit(create(f"c{i}"))) for i in range(6)]
        assert await asyncio.to_thread(putting.wait, 10)  # the group is being committed
        for write in writes[::2]:
            write.cancel()
        await asyncio.sleep(0)
        go_on.set()
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        later = await acceptor.submit(create("later"))
        again = await acceptor.submit(create("c0"))
    finally:
        await acceptor.close()
    index.close()
    assert [isinstance(o, asyncio.CancelledError) for o in outcomes] == [True, False] * 3
    assert [o.outcome for o in outcomes[1::2]] == ["created"] * 3  # type: ignore[union-attr]
    assert later.outcome == "created"
    assert again.outcome == "duplicate"  # the cancelled write was committed all the same
    assert spool.stats().depth_ops == 7
    assert ledger.snapshot().accepted == 7
    assert acceptor.failure is None
