"""Item refusals in one answer: the refused snapshots' operations go again in order.

When the server refuses several snapshots of a batch as items (its 200 answer lists
them), each snapshot of several operations is re-sent as those operations. They must
go in the order they were accepted: a run can have two snapshots in one batch (two
heartbeats' patches no merge patch composes, ``spoold.forward.coalesce``), and its second
snapshot's operations sent before its first's would apply an older progress last.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from server.contract.models import HeartbeatBody
from spoold.forward.coalesce import coalesce
from spoold.forward.handoff import LocalFaults, Slot, StopClock
from spoold.forward.rounds import DrainStats, Planned, RoundOps
from spoold.forward.send import SendStage
from spoold.spool.operations import heartbeat_op
from spoold.spool.writegate import WriteGate
from spoold.upstream.client import BatchAnswer
from spoold.upstream.retry import Backoff
from spoold.upstream.status import UpstreamStatus


class RefuseFirstBatch:
    """Refuses every item of the first batch; takes every later one; records them all."""

    def __init__(self) -> None:
        self.sent: list[list[dict[str, Any]]] = []

    async def send_batch(self, body: bytes, items: int) -> BatchAnswer:
        batch = orjson.loads(body)
        self.sent.append(batch)
        errors = []
        if len(self.sent) == 1:
            errors = [
                {"index": i, "event_id": item["event_id"], "message": "refused"}
                for i, item in enumerate(batch)
            ]
        answer = {
            "inserted": 0,
            "updated": items - len(errors),
            "duplicates": 0,
            "errors": errors,
            "total": items,
        }
        return BatchAnswer("ok", 200, body=answer)


async def test_refused_snapshots_of_one_run_are_resent_in_accept_order() -> None:
    progress: list[dict[str, Any]] = [
        {"a": None},
        {"b": 1},
        {"a": {"x": 1}},  # cannot compose with {"a": None}: the run's second snapshot
        {"b": 2},
    ]
    ops = [
        heartbeat_op("run-1", HeartbeatBody(progress=p), f"2026-01-12T10:00:0{i}.000000+00:00")
        for i, p in enumerate(progress)
    ]
    snapshots = coalesce(ops)
    assert [s.positions for s in snapshots] == [[0, 1], [2, 3]]
    client = RefuseFirstBatch()
    backoff = Backoff(base_s=0.01, cap_s=0.01)
    clock = StopClock()
    sender = SendStage(
        Slot(),
        Slot(),
        cast(Any, client),
        UpstreamStatus(url="http://127.0.0.1:9"),
        cast(Any, None),  # nothing is dead-lettered here
        DrainStats(),
        clock,
        LocalFaults(backoff, clock),
        WriteGate(),
        backoff=backoff,
    )
    chunk = [Planned(s.event_id, tuple(s.positions)) for s in snapshots]
    refused = await sender.deliver([(chunk, None)], RoundOps(ops))
    assert refused == {}
    resent = [item["metrics_patch"] for batch in client.sent[1:] for item in batch]
    assert resent == progress  # each operation alone, in the order it was accepted
