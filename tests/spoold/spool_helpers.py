"""Helpers shared by the spool tests (a uniquely named module, importable from any test)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from spoold.accept.acceptor import Acceptor
from spoold.spool import Spool, housekeeping
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex

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


def clear_acked_now(spool: Spool) -> None:
    """Delete the acked rows now, through the drainer's idle housekeeping (as if the spool
    had been idle and enough acked bytes had piled up)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(housekeeping, "VACUUM_AFTER_IDLE_S", 0.0)
        patch.setattr(housekeeping, "CLEAR_EVERY_BYTES", 0)
        spool.housekeep_when_idle()


def disk_full() -> sqlite3.OperationalError:
    """The error SQLite raises when the disk is full (with its error code set)."""
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = sqlite3.SQLITE_FULL
    return exc


async def accept(spool: Spool, index: RunsIndex, *ops: dict[str, Any]) -> None:
    """Accept ops one by one through the real accept path: one spool item each."""
    acceptor = Acceptor(spool, index, Ledger())
    acceptor.start()
    try:
        for op in ops:
            await acceptor.submit(op)
    finally:
        await acceptor.close()


def create_run(name: str) -> dict[str, Any]:
    """A create operation of run ``r-<name>`` (event_id ``name``)."""
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}
