"""No commit of the drainer's copies a WAL into its database while holding a lock the
accept path needs; the drainer copies what it wrote itself, between rounds.

SQLite's auto-checkpoint runs inside whichever commit crosses its mark: in the
drainer's settle (holding the runs index's write gate) or in its take and ack of a spool
group (holding the spool's put lock), that copy and its two fsyncs stalled agents'
writes for 10-30 ms (``bench/spoold_bench.py``, 300k-op drain). Those transactions run
with auto-checkpoint off (the drain's index connection as ``spoold.state.storage`` opens
it; the spool's connections inside the put-first lock), and the drainer copies the WAL
(PASSIVE, no lock held) after so many bytes of its own writes: the WAL files stay
bounded through a drain that no agent writes during.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from spool_helpers import SpoolFactory, accept, op

from spoold.forward.handoff import LocalFaults, Slot, StopClock
from spoold.forward.record import RecordStage
from spoold.forward.rounds import Delivered, DrainStats
from spoold.spool import layout
from spoold.state.ledger import Counts, Ledger
from spoold.state.runs_index import RunsIndex
from spoold.state.storage import open_storage
from spoold.upstream.retry import Backoff

MiB = 1024 * 1024


def create(name: str, pad: int = 600) -> dict[str, Any]:
    body = {"event_id": name, "run_id": f"r-{name}", "output_summary": "x" * pad}
    return {"kind": "create", "event_id": name, "body": body}


def wal_bytes(db_path: Path) -> int:
    wal = Path(f"{db_path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_a_drain_without_puts_keeps_the_spool_wal_bounded(
    make_spool: SpoolFactory,
) -> None:
    """600 groups, taken and acked one at a time with no put in between: each ack's delete
    writes ~20 KiB of WAL (~12 MiB in all if nothing copied it)."""
    spool = make_spool(capacity_bytes=256 * MiB)
    for i in range(600):
        spool.put_group([op(i, size=6_000)])
    db_path = spool.directory / layout.DB_FILE
    before = wal_bytes(db_path)  # the fill's own high-water mark (the file never shrinks)
    peak = 0
    for _ in range(700):
        groups = spool.get_groups(1)
        if not groups:
            break
        spool.ack(groups)
        peak = max(peak, wal_bytes(db_path))
    assert spool.stats().depth_ops == 0
    assert peak <= before + 3 * MiB, f"the WAL reached {peak / MiB:.1f} MiB in the drain"


async def test_a_drain_without_accepts_keeps_the_index_wal_bounded(
    tmp_path: Path, make_spool: SpoolFactory
) -> None:
    """3,000 runs settled 100 at a time, the accept path idle, the drain's connection with
    auto-checkpoint off (as ``spoold.state.storage`` opens it): the record stage's own
    copies between rounds keep the WAL bounded (~12 MiB of settles if nothing copied
    it), and no settle's commit copies it."""
    path = tmp_path / "index.sqlite"
    spool = make_spool(capacity_bytes=256 * MiB)
    accepting = RunsIndex(path)
    draining = RunsIndex(path, synchronous="FULL", yields=True)
    try:
        await accept(spool, accepting, *(create(f"e{i}") for i in range(3000)))
        draining.wal_autocheckpoint(0)
        with contextlib.closing(sqlite3.connect(path)) as conn:  # the drain's WAL alone
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        assert wal_bytes(path) == 0
        faults = LocalFaults(Backoff(base_s=0.01, cap_s=0.01), StopClock())
        ledger = Ledger(Counts(accepted=3000, queued=3000))
        stage = RecordStage(Slot(), spool, draining, ledger, DrainStats(), faults)
        copies: list[bool] = []
        copy_wal = draining.copy_wal

        def counted() -> bool:
            copies.append(copy_wal())
            return copies[-1]

        draining.copy_wal = counted  # type: ignore[method-assign]
        peak = 0
        for _ in range(100):
            groups = spool.get_groups(100)
            if not groups:
                break
            ids = [o["event_id"] for g in groups for o in g.ops]
            stage.record(Delivered(groups, ids, frozenset(), time.perf_counter()))
            peak = max(peak, wal_bytes(path))
        assert draining.counters()["forwarded"] == 3000
        assert len(copies) >= 2
        assert peak <= 8 * MiB, f"index WAL reached {peak / MiB:.1f} MiB"
    finally:
        draining.close()
        accepting.close()


def test_spoold_opens_the_drains_index_connection_without_checkpoints_or_fsyncs(
    spool_dir: Path,
) -> None:
    """As the drain uses it: its commits neither copy the WAL nor fsync (the record stage
    does both itself, outside the write gate)."""
    storage = open_storage(spool_dir, capacity_bytes=1 << 30, min_free_disk_bytes=0)
    try:
        assert storage.drain_index.wal_autocheckpoint() == 0
        assert storage.drain_index.synchronous() == 1  # NORMAL
        assert storage.accept_index.wal_autocheckpoint() != 0  # the acceptor's own business
    finally:
        storage.close()
