"""The runs index's pruner: a pass a minute, its disk writes a few MB at a time.

Each pass forgets long-settled runs, and the oldest once the index passes its byte
bound (``RunsIndex.prune``), so the index stays bounded. Not more often than
``PRUNE_EVERY_S``, even after a pass cut short by its row bound: each pass's deletes share
the index with the accept path. The cost: at most ``PRUNE_MAX_ROWS`` runs forgotten by age
a minute (ten times that by size), so a host settling more than that for long exceeds
``SPOOLD_INDEX_MAX_MB`` until its load eases.

Why the write-out is paced (``PrunePacer``): an index at its byte bound with a million
runs forgets up to 100,000 a minute. Its deletes are random in the event_id index, and
each slice's commit (``PRUNE_SLICE_ROWS``) writes every page it touched to the WAL again:
one pass wrote ~430 MB of WAL in under a second, without an fsync (forgetting is redone
after a crash). All of it then went to the disk at once, in the next fsync of the WAL
(the drainer's, after a settle) and in the copy into the database that ended the pass: a
4 KiB fdatasync on the same disk waited up to 130-190 ms meanwhile, and so did the
spool's put fsync with every write of its group. Whenever ``bench/spoold_bench.py``'s
paced creates met a pass, their p99 went from ~20 ms to 72-123 ms. Paced, every
``SLICES_PER_CHUNK`` slices the pacer fsyncs the WAL (what those slices wrote), copies it
into the database (PASSIVE: it waits on no writer), flushes what the copy wrote
(``server.sqlite.db_flush``), then rests as long as that took (at most ``MAX_REST_S``):
the same pass took 5-6 s, the WAL stayed at 2 MB, and that fdatasync waited 9-11 ms at
most. Once a flush of the database failed, nothing more is copied (the kernel may have
dropped the pages a copy wrote); the WAL is still fsync'd.

A stop ends the pass between two slices (``close``): what is committed stays forgotten.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable

import structlog

from server.sqlite.db_flush import DatabaseFlush
from spoold.state.runs_index import RunsIndex

log = structlog.get_logger("spoold.state.pruner")

PRUNE_EVERY_S = 60.0
#: Pruner slices between two write-outs: ~512 runs, a few MB of WAL at a million runs.
SLICES_PER_CHUNK = 2
#: The rest after a write-out, as a share of its time, and its cap.
REST_RATIO = 1.0
MAX_REST_S = 0.1


class PruneStopped(Exception):
    """The pruner is stopping: the pass ends after the slice just committed."""


class PrunePacer:
    """``after_slice`` for ``RunsIndex.prune``; ``finish`` once the pass is done."""

    def __init__(
        self,
        index: RunsIndex,
        flush: DatabaseFlush | None,
        *,
        stopping: threading.Event | None = None,
        slices_per_chunk: int = SLICES_PER_CHUNK,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._index = index
        self._flush = flush
        self._stopping = stopping or threading.Event()
        self._slices_per_chunk = max(1, slices_per_chunk)
        self._sleep = sleep
        self._complete = False
        self.slices = 0
        self.write_outs = 0
        #: The longest write-out (WAL fsync, copy, flush), and the time rested, seconds.
        self.longest_s = 0.0
        self.rested_s = 0.0

    def after_slice(self) -> None:
        self.slices += 1
        if self.slices % self._slices_per_chunk == 0:
            spent = self._write_out()
            rest = min(spent * REST_RATIO, MAX_REST_S)
            self.rested_s += rest
            self._sleep(rest)
        if self._stopping.is_set():
            raise PruneStopped

    def finish(self) -> bool:
        """Write out what the last slices wrote; whether every frame was copied (the next
        write transaction then starts the WAL over)."""
        self._write_out()
        return self._complete

    def _write_out(self) -> float:
        started = time.perf_counter()
        self._index.sync()
        self._complete = False
        flush = self._flush
        if flush is None or not flush.failed:
            self._complete = self._index.copy_wal()
            if flush is not None:
                flush.flush()
        spent = time.perf_counter() - started
        self.write_outs += 1
        self.longest_s = max(self.longest_s, spent)
        return spent


class IndexPruner:
    """``run`` as a task, ``close`` at the stop; the passes run on a thread of their own."""

    def __init__(
        self,
        index: RunsIndex,
        flush: DatabaseFlush | None,
        *,
        retention_s: float,
        max_bytes: int,
    ) -> None:
        self._index = index
        self._flush = flush
        self._retention_s = retention_s
        self._max_bytes = max_bytes
        self._stopping = threading.Event()
        #: Set while no pass runs on the thread (the connection may then be closed).
        self._idle = threading.Event()
        self._idle.set()

    async def run(self) -> None:
        """A pass every ``PRUNE_EVERY_S``; a failed pass (the index locked too long, the
        disk full) is logged and tried again at the next: the bound must not end with one
        error."""
        while not self._stopping.is_set():
            await asyncio.sleep(PRUNE_EVERY_S)
            self._idle.clear()
            try:
                await asyncio.to_thread(self._pass)
            except (sqlite3.Error, OSError) as exc:
                log.warning("runs_index_prune_failed", error=repr(exc)[:300])

    async def close(self, task: asyncio.Task[None], timeout_s: float) -> bool:
        """Stop ``task`` (this pruner's ``run``) and close the connection once no pass
        runs; whether it was closed (not if a pass is still stuck after ``timeout_s``)."""
        self._stopping.set()
        task.cancel()
        await asyncio.wait({task}, timeout=timeout_s)
        if not await asyncio.to_thread(self._idle.wait, timeout_s):
            log.warning("runs_index_pruner_still_running", waited_s=timeout_s)
            return False
        await asyncio.to_thread(self._index.close)
        return True

    def _pass(self) -> None:
        try:
            pacer = PrunePacer(self._index, self._flush, stopping=self._stopping)
            started = time.perf_counter()
            try:
                removed = self._index.prune(
                    keep_s=self._retention_s,
                    max_bytes=self._max_bytes,
                    after_slice=pacer.after_slice,
                )
            except PruneStopped:
                return
            if not removed:
                return
            try:
                pacer.finish()
            except (sqlite3.Error, OSError) as exc:  # the next pass copies it; the drain's too
                log.warning("runs_index_checkpoint_failed", error=repr(exc)[:300])
            log.info(
                "runs_index_pruned",
                removed=removed,
                seconds=round(time.perf_counter() - started, 3),
                write_outs=pacer.write_outs,
                longest_write_out_ms=round(pacer.longest_s * 1000, 1),
                rested_s=round(pacer.rested_s, 3),
            )
        finally:
            self._idle.set()
