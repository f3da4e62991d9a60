"""What spoold keeps of a large write once it is past each step is bytes, never its
decoded objects: in the accept thread after the answer, in a drain round once packed.

A spooled body costs ~20-35 times its bytes once decoded (``[[],[],...]``: one Python
list per 3 bytes). The drainer decodes a round to fold and pack it, and must let the
decoded objects go as soon as its batches are encoded: a round is held for as long as
the server takes to answer (forever while it is down), the next round is read ahead
meanwhile, and the spool keeps one more group read but not yet handed out. Holding them
decoded took spoold past its unit's MemoryMax under a flood of large bodies
(tests/faults/test_memory_flood.py). Measured here by counting the Python containers
left alive (the decoded form of a body; bytes are not containers), not with time:
tracemalloc misreports orjson's output buffers.
"""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any

import orjson
from spool_helpers import SpoolFactory

from spoold.accept.acceptor import Acceptor
from spoold.forward.drainer import Drainer
from spoold.spool import Spool
from spoold.spool.writegate import WriteGate
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex

LISTS = 200_000  # ~600 KB of JSON, ~13 MB of Python objects once decoded


def heavy_op(n: int) -> dict[str, Any]:
    event_id = f"ev-heavy-{n}"
    body = {"event_id": event_id, "metrics_json": {"a": [[] for _ in range(LISTS)]}}
    return {"kind": "create", "event_id": event_id, "body": body, "accepted_at": "t"}


def encoded_size(op: dict[str, Any]) -> int:
    return len(orjson.dumps(op))


def containers() -> int:
    """Python containers alive now (after a full collection)."""
    gc.collect()
    return len(gc.get_objects())


def fill(spool: Spool, groups: int) -> int:
    """``groups`` groups of one heavy operation each; the size of one, encoded."""
    for n in range(groups):
        spool.put_group([heavy_op(n)])
    return encoded_size(heavy_op(0))


def test_the_spool_keeps_taken_and_carried_groups_as_bytes(make_spool: SpoolFactory) -> None:
    """get_groups hands out one group (the byte bound) and carries the next: once the
    caller drops what it got, the spool holds neither of them decoded."""
    spool = make_spool()
    size = fill(spool, 3)
    baseline = containers()
    got = spool.get_groups(100, max_bytes=size + 100)
    assert len(got) == 1
    assert len(got[0].ops[0]["body"]["metrics_json"]["a"]) == LISTS
    assert containers() - baseline > LISTS  # the caller's group, decoded
    del got
    held = containers() - baseline
    assert held < LISTS // 10, f"the spool holds {held} containers (a group decodes to {LISTS})"


def test_a_prepared_round_holds_its_batches_not_its_decoded_operations(
    make_spool: SpoolFactory,
) -> None:
    """A round read (and one read ahead) by the drainer: its groups, its operations and
    its batches, plus the group the spool carries, hold nothing decoded."""
    spool = make_spool()
    size = fill(spool, 3)
    drainer = Drainer(
        spool,
        None,  # type: ignore[arg-type]  # reading a round needs only the spool
        SimpleNamespace(gate=WriteGate()),  # type: ignore[arg-type]  # (and a gate to start)
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        batch_size=500,
        batch_max_bytes=size + 1000,
        backoff=None,  # type: ignore[arg-type]
    )
    baseline = containers()
    first = drainer.reader.read_round()
    ahead = drainer.reader.read_round()
    assert len(first.groups) == 1
    assert len(ahead.groups) == 1
    assert first.batches
    held = containers() - baseline
    assert held < LISTS // 10, f"two rounds hold {held} containers (one op decodes to {LISTS})"
    # Nothing was lost by letting go: the operations can still be had, whole.
    assert first.ops[0]["body"]["metrics_json"]["a"] == [[]] * LISTS
    spool.nack(first.groups + ahead.groups)


async def test_the_accept_thread_lets_go_of_a_write_once_it_is_answered(
    make_spool: SpoolFactory, tmp_path: Any
) -> None:
    """Once a write is durable and answered, nothing of it stays decoded in the accept
    thread while it waits for the next write: the next large body (admitted as soon as
    this one is answered) must not find the last one still alive."""
    spool = make_spool()
    index = RunsIndex(tmp_path / "index.sqlite")
    acceptor = Acceptor(spool, index, Ledger())
    acceptor.start()
    try:
        baseline = containers()
        op = heavy_op(0)
        assert (await acceptor.submit(op)).outcome == "created"
        del op
        # The answer can reach us a moment before the thread is back waiting for the next
        # write: give it that moment (bounded), then the group must be gone.
        held = containers() - baseline
        for _ in range(50):
            if held < LISTS // 10:
                break
            await asyncio.sleep(0.02)
            held = containers() - baseline
        assert held < LISTS // 10, f"{held} containers still alive after the answer"
    finally:
        await acceptor.close()
        index.close()
