"""The spool's side of start-up repair (``spoold.state.recovery``): scanning the live
items by id, discarding those already delivered, and counting again from the file.

These run before the drainer starts, on the spool's I/O lock, which the caller holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from spoold.spool import store, totals
from spoold.spool.capacity import Capacity
from spoold.spool.codec import SpoolGroup
from spoold.spool.depth import Depth
from spoold.spool.errors import SpoolWriteError

#: Rows deleted per transaction (a put waits at most for one: a few MB of groups).
DISCARD_CHUNK = 8


def recount(side: Any, depth: Depth) -> None:
    """Set the in-memory counts from the totals kept in the file."""
    groups, nbytes, ops = totals.read(side)
    depth.recounted(groups, nbytes, ops, store.oldest_enqueued_at(side))


def as_items(rows: list[tuple[int, Any]], item_id: int) -> tuple[int, list[SpoolGroup]]:
    """(last id scanned, the rows that decode): ``item_id`` when there were no rows.
    Undecodable rows are scanned but not returned (the reader sets them aside)."""
    items = [
        SpoolGroup(pqid, decoded.ops, decoded.enqueued_at, decoded.nbytes)
        for pqid, decoded in rows
        if decoded.valid
    ]
    return (rows[-1][0] if rows else item_id), items


def discard(
    queue: Any, side: Any, capacity: Capacity, depth: Depth, item_ids: Iterable[int]
) -> int:
    """Delete items by id without handing them out (already delivered); the live ones
    only. Returns how many were discarded; the counts are read again from the file."""
    live = store.live_ids(side, item_ids)
    try:
        for start in range(0, len(live), DISCARD_CHUNK):
            chunk = live[start : start + DISCARD_CHUNK]
            capacity.when_full_retry(lambda c=chunk: store.delete_rows(queue, side, c))  # type: ignore[misc]
    except sqlite3.Error as exc:
        raise SpoolWriteError(f"spool discard failed: {exc}") from exc
    finally:
        recount(side, depth)
    return len(live)
