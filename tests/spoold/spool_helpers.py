"""Helpers shared by the spool tests (a uniquely named module, importable from any test)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spoold.spool import Spool

SpoolFactory = Callable[..., Spool]


def op(i: int, size: int = 0) -> dict[str, Any]:
    """A small operation tagged with ``i`` (padded to about ``size`` bytes)."""
    event_id = f"ev-{i}"
    return {
        "kind": "create",
        "event_id": event_id,
        "body": {"event_id": event_id},
        "seq": i,
        "pad": "x" * size,
    }


def all_seqs(spool: Spool, max_ops: int = 1000) -> list[int]:
    """Get (without acking) every queued operation's seq, in queue order."""
    seqs: list[int] = []
    for _ in range(100_000):
        groups = spool.get_groups(max_ops)
        if not groups:
            return seqs
        seqs.extend(o["seq"] for g in groups for o in g.ops)
    raise AssertionError("spool did not run dry")
