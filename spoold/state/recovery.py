"""Start-up repair of the two files a crash can leave one step apart: spool and runs index.

Every accept cycle commits the spool item first and the index (with the item's
id as ``last_spooled_id``) second; every drain round commits the index settle
(with the items' ids as ``settling_ids``) first and the spool ack second. So
after a kill -9 at any point, at most one step is missing, and it is visible:

- items above ``last_spooled_id`` are in the spool but not in the index: fold
  them in (they will be forwarded, so they count as accepted);
- ``settling_ids`` still live in the spool were delivered (or dead-lettered)
  and counted: ack them without sending them again. A settle goes in slices
  (short transactions, see ``spoold.forward.record``); the mark says how many
  of the items' operations were settled, and a settle cut short is finished
  first (the rest of its operations counted, their runs' pending lowered).

Each spool file has a random identity (``Spool.identity``) and the index
records which one its marks are about. A spool file that was replaced (renamed
aside as corrupt, or deleted) has another: its marks are void, and the
operations that were queued in the old file are gone from the queue. In one
commit the index forgets their runs (so they can be sent again), counts them
as dead-lettered and ``quarantined`` and takes the new file's identity; a log
line says how many.

A spool file older than the index (a copy put back: the index saw ids it never gave
out) gives out ids above the index's from then on (``Spool.raise_ids_to``): ids are the
drainer's snapshot sequences, which must never go back (``spoold.forward.coalesce``).

A new index (the old one was damaged and set aside, see ``spoold.state.storage``)
has no marks: every live spool item is folded in, which rebuilds it.

Last, the counters are checked against the spool. An index that still counts
more operations as queued than the spool holds lost settles whose spool acks
survived (an old copy put back; the drainer fsyncs a settle before its spool ack,
and an ack before the next settle, which makes this impossible on a power loss): its pending state is recomputed from the
spool, and the operations that left the queue are counted as forwarded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog

from spoold.spool import Spool
from spoold.state.ledger import Counts
from spoold.state.runs_index import RunsIndex

log = structlog.get_logger("spoold.state.recovery")

FOLD_CHUNK = 256  # spool items read per step: memory stays bounded whatever the backlog


def reconcile(spool: Spool, index: RunsIndex) -> Counts:
    """Bring the index in line with the spool; the counters to start the ledger from."""
    known = index.spool_id()
    if known is not None:
        replaced = known != spool.identity
    else:  # a new index, or one that has not recorded an identity yet: judge by the marks
        replaced = spool.quarantined_to is not None or (
            index.last_spooled_id() > spool.last_allocated_id()
        )
        if not replaced:
            legacy = index.counters()["accepted"] > 0 and not index.has_recorded_spool_items()
            index.adopt_spool(spool.identity, spool.last_allocated_id() if legacy else None)
    if replaced:
        _spool_replaced(spool, index)
    else:
        _keep_ids_growing(spool, index)
        _finish_settle(spool, index)
        discarded = spool.discard(index.settling_ids())
        if discarded:
            log.info("spool_delivered_items_acked", items=discarded)
    folded = _fold_unrecorded(spool, index)
    if folded:
        log.info("runs_index_caught_up", operations=folded)
    counters = index.counters()
    queued = spool.stats().depth_ops
    gap = counters["accepted"] - counters["forwarded"] - counters["dead_lettered"] - queued
    if gap > 0:
        index.recount_pending(_spooled_ops(spool), gap)
        log.warning("runs_index_pending_recounted", operations_left_queue=gap, queued=queued)
        counters = index.counters()
    elif gap:
        log.error("accounting_mismatch", queued=queued, **counters)
    return Counts(
        accepted=counters["accepted"],
        forwarded=counters["forwarded"],
        queued=queued,
        dead_lettered=counters["dead_lettered"],
        duplicates=counters["duplicates"],
        quarantined=counters["quarantined"],
    )


def _keep_ids_growing(spool: Spool, index: RunsIndex) -> None:
    """The index recorded spool ids this file never gave out: it is an older copy put
    back. Its next ids must still be above every id the index saw (and so above every
    snapshot sequence sent from this spool, which the server keeps per run and compares:
    a lower one would be skipped as older)."""
    recorded, allocated = index.last_spooled_id(), spool.last_allocated_id()
    if recorded > allocated:
        spool.raise_ids_to(recorded)
        log.warning("spool_ids_raised", last_allocated_id=allocated, raised_to=recorded)


def _finish_settle(spool: Spool, index: RunsIndex) -> None:
    """A crash cut a sliced settle short: settle the rest of its operations now.

    The whole round was delivered (or dead-lettered) before its first slice, and its
    items are acked only after its last, so they are all still in the spool: their
    operations, in spool order, are the positions the mark counts.
    """
    mark = index.settling()
    if mark.complete or mark.ops is None:
        return
    wanted = set(mark.ids)
    ops: list[dict[str, Any]] = []
    last = min(wanted) - 1
    while wanted:  # bounded: each step moves past at least one live item, or stops
        scanned_to, items = spool.items_after(last, max(1, len(wanted)))
        if scanned_to == last:
            break
        for item in items:
            if item.id in wanted:
                wanted.discard(item.id)
                ops += item.ops
        last = scanned_to
        if last >= max(mark.ids):
            break
    if len(ops) != mark.ops:  # cannot happen while the order above holds; never guess
        log.error("settle_unfinished", expected=mark.ops, found=len(ops), items=mark.ids)
        return
    dead = set(mark.dead)
    forwarded: dict[str, int] = {}
    dead_lettered: dict[str, int] = {}
    for position in range(mark.done, mark.ops):
        into = dead_lettered if position in dead else forwarded
        event_id = ops[position]["event_id"]
        into[event_id] = into.get(event_id, 0) + 1
    index.settle(forwarded, dead_lettered, mark.ids)
    log.info("settle_finished", operations=mark.ops - mark.done, items=len(mark.ids))


def _spool_replaced(spool: Spool, index: RunsIndex) -> None:
    """The marks are about another spool file: what it still held is gone from the queue."""
    counters = index.counters()
    lost = max(0, counters["accepted"] - counters["forwarded"] - counters["dead_lettered"])
    runs = index.spool_replaced(spool.identity, lost)
    log.warning(
        "spool_operations_lost",
        operations=lost,
        runs=runs,
        renamed_to=str(spool.quarantined_to) if spool.quarantined_to else None,
        hint="the runs can be sent again; a renamed file is kept for inspection",
    )


def _spooled_ops(spool: Spool) -> Iterator[list[dict[str, Any]]]:
    """The operations of every live spool item, a chunk of items at a time."""
    last = 0
    while True:
        scanned_to, items = spool.items_after(last, FOLD_CHUNK)
        if scanned_to == last:
            return
        yield [op for item in items for op in item.ops]
        last = scanned_to


def _fold_unrecorded(spool: Spool, index: RunsIndex) -> int:
    """Record spool items the index has not seen; the number of operations folded."""
    last, folded = index.last_spooled_id(), 0
    while True:
        scanned_to, items = spool.items_after(last, FOLD_CHUNK)
        if scanned_to == last:
            return folded
        for item in items:
            index.fold_spooled(item.id, item.ops)
            folded += len(item.ops)
        last = scanned_to
