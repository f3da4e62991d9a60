"""What this sidecar knows about runs: which event_ids it accepted, and their snapshots.

Needed for three promises of the sidecar: a repeated POST answers ``duplicate``;
PATCH / associate-commit of a known run is accepted without asking the server;
a run still only in the local queue is answered from here (read-your-writes).

It lives in its own SQLite file beside the spool, written by the accept thread
inside the same group cycle as the spool put (committed after it, so it never
claims an operation that is not spooled) and by the drainer when operations
leave the queue. Each commit also records which spool items it covers
(``marks``), so start-up can repair what a crash between the two files left
half done (``spoold.state.recovery``). WAL; the accept connection commits with
synchronous=NORMAL (it survives kill -9; after a power loss it may forget its
last commits, which start-up folds in again from the fsync'd spool), the
drainer's settles are fsync'd (after the commit, outside the write gate: ``sync``)
before the spool ack that follows them, so a power loss never keeps the ack and loses
the settle. Should an
index still disagree with the spool (restored from a backup, say), start-up
recomputes the pending state from the spool (``recount_pending``). A forgotten
run costs a ``created`` instead of ``duplicate`` or a question to the server.

Within this process, write transactions take the file's ``WriteGate``
(``spoold.spool.writegate``): the accept thread's go before the drainer's, which settles a
round in short slices, each commit naming the round's items and how far it got
(``Settling``), so start-up can finish a settle a crash cut short.

Footprint: a run's full snapshot is needed only while some operation of it is
queued here (read-your-writes) or dead-lettered (replay checks letters against
it). When a settle leaves a run with nothing pending and no dead letter, its row
shrinks in that same commit to what the answers need - ``run_id`` (duplicate and
PATCH/associate answers), ``has_create`` and ``touched_at`` - and is marked not
``complete``: updates accepted later fold into that partial snapshot, which is
then only ever merged over the server's copy, never answered alone. SQLite
reuses the freed pages, the WAL starts over near 8 MiB and is truncated
(``journal_size_limit``), and ``prune`` forgets the oldest settled runs once the
index passes its byte bound plus what the backlog's rows take (estimated from the
spool's bytes), so the file is bounded by the backlog plus that bound, not by the
throughput; a backlog never makes it forget delivered runs the bound has room for.

A damaged index file is set aside and a fresh one rebuilt from the spool
(``spoold.state.storage``): the queued runs are known again, the history counters
(``accepted``, ``forwarded``, ...) restart from what the spool holds.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog

from server.sqlite.connect import connect
from server.sqlite.wal_sync import WalSync
from spoold.config import INDEX_BUSY_TIMEOUT_MS
from spoold.spool.writegate import WriteGate
from spoold.state.known import fold_known

log = structlog.get_logger(__name__)

Outcome = Literal["created", "duplicate", "accepted", "unknown"]
Synchronous = Literal["NORMAL", "FULL"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        event_id TEXT PRIMARY KEY,
        snapshot TEXT NOT NULL,
        has_create INTEGER NOT NULL,
        pending INTEGER NOT NULL DEFAULT 0,
        touched_at REAL NOT NULL,
        complete INTEGER NOT NULL DEFAULT 1,
        letters INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS runs_prunable ON runs(pending, touched_at)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
COUNTERS = ("accepted", "forwarded", "dead_lettered", "duplicates", "quarantined")
#: How often a damaged local file was set aside (see ``spoold.state.storage``); kept with the
#: accounting counters, so a rebuilt index starts ``index_rebuilds`` from the set-aside files.
RECOVERY_COUNTERS = ("index_rebuilds", "dead_letter_store_resets", "spool_resets")
#: ``marks``: which spool file the marks are about, the last spool item recorded
#: here, and the items of the last settle (delivered, maybe not yet acked in the
#: spool); see ``spoold.state.recovery``.
LAST_SPOOLED, SETTLING, SPOOL_ID = "last_spooled_id", "settling_ids", "spool_id"
#: ``runs.has_create``: this sidecar accepted the create; the server confirmed the run
#: exists; or only updates queued while the server could not be asked.
CREATED, CONFIRMED, UNCONFIRMED = 1, 0, -1
#: Columns added since the first schema (an older index gets them when opened).
_ADDED_COLUMNS = {
    "complete": "INTEGER NOT NULL DEFAULT 1",
    "letters": "INTEGER NOT NULL DEFAULT 0",
}
#: Longest ``close`` waits for another thread's statement on the connection.
CLOSE_WAIT_S = 5.0
#: Runs ``prune`` deletes per write transaction.
PRUNE_SLICE_ROWS = 256
#: Runs one prune pass forgets by age at most.
PRUNE_MAX_ROWS = 10_000
#: Runs one prune pass forgets at most to meet the byte bound: a pass a minute must forget
#: as fast as spoold can settle, or the bound holds only below that rate (the cap was
#: 100,000 a pass, ~1,700 runs/s, under spoold's 3,500 creates/s target). A million a
#: minute is ~16,700 runs/s, above anything spoold accepts; the deletes go in
#: ``PRUNE_SLICE_ROWS`` transactions, so the accept path still never waits behind one.
PRUNE_MAX_BOUND_ROWS = 1_000_000
#: What a queued run's row takes in the index, at most, per byte its operations take in
#: the spool: 1.1 for fleet-shaped creates (891 against 814 bytes a run, on a 50,000-run
#: fill of bench/spoold_bench.py), less for a lifecycle (one row, two operations), up to
#: 2 for rows of 2-4 KiB (one to a 4 KiB page: 1.9 for 2.2 KB in the unit test). Too high,
#: delivered runs keep more than the bound while a backlog lasts (never more than the
#: backlog's bytes); too low, a backlog makes the pruner forget delivered runs for nothing.
#: Low for one case: small updates of delivered runs (a ~90-byte PATCH pending in a
#: ~200-byte row); the shortfall is forgotten once, not at every pass.
BACKLOG_ROW_BYTES_PER_SPOOL_BYTE = 2.0
#: The WAL is truncated to this when it starts over (it would otherwise keep its peak
#: size). Above the ~8 MiB at which the accept thread has it start over
#: (``spoold.accept.acceptor.INDEX_RESTART_FRAMES``): a restart in steady state truncates
#: nothing; only one after a burst gives disk back.
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024
#: What a settled run keeps: its run_id when it has one, else nothing.
_SHRUNK = (
    "CASE WHEN json_valid(snapshot) AND json_type(snapshot, '$.run_id') = 'text'"
    " THEN json_object('run_id', json_extract(snapshot, '$.run_id')) ELSE '{}' END"
)
#: Shrink a settled run. Re-inserted (REPLACE gives it a new rowid at the table's end)
#: rather than updated in place: a row that held a large snapshot had a leaf page to
#: itself, which an in-place update would leave holding one small cell; deleted, the page
#: is freed and reused, and the small rows pack densely.
_SHRINK = (
    "INSERT OR REPLACE INTO runs"
    " (event_id, snapshot, has_create, pending, touched_at, complete, letters)"
    f" SELECT event_id, {_SHRUNK}, has_create, pending, touched_at, 0, letters FROM runs"
    " WHERE event_id = ? AND pending = 0 AND letters = 0"
)
#: Shrink every settled run still whole (an upgraded index, or after ``recount_pending``).
_SHRINK_SETTLED = _SHRINK.replace("event_id = ? AND ", "complete = 1 AND ")


_GATES: dict[str, WriteGate] = {}
_GATES_LOCK = threading.Lock()


def write_gate(path: Path) -> WriteGate:
    """The gate of the index file at ``path`` (one per file in this process)."""
    key = os.path.realpath(path)
    with _GATES_LOCK:
        return _GATES.setdefault(key, WriteGate())


@dataclass(frozen=True)
class Settling:
    """The ``settling_ids`` mark: the spool items of the last settle and how far it got.

    A round is settled in slices (short write transactions, so the accept path is
    never kept waiting long); each slice's commit says how many of the items'
    operations (in spool order) are settled so far and which of them were
    dead-lettered. Start-up finishes a settle cut short by a crash
    (``spoold.state.recovery``); ``ops`` is None for a settle done in one commit.
    """

    ids: list[int] = field(default_factory=list)
    ops: int | None = None
    done: int = 0
    dead: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        return self.ops is None or self.done >= self.ops

    def encoded(self) -> str:
        # Complete: the plain list of ids, which every older spoold parses too (a
        # dict would stop one at start-up after a downgrade).
        if self.complete:
            return orjson.dumps(sorted(self.ids)).decode()
        mark = {"ids": sorted(self.ids), "ops": self.ops, "done": self.done, "dead": self.dead}
        return orjson.dumps(mark).decode()

    @classmethod
    def decoded(cls, value: str | None) -> Settling:
        mark = orjson.loads(value or "[]")
        if isinstance(mark, list):  # settled in one commit (and every older spoold's mark)
            return cls([int(i) for i in mark])
        return cls(
            [int(i) for i in mark["ids"]],
            int(mark["ops"]),
            int(mark["done"]),
            tuple(int(p) for p in mark["dead"]),
        )


@dataclass(frozen=True)
class KnownRun:
    event_id: str
    snapshot: dict[str, Any]
    has_create: bool
    pending: int
    #: False once the run was delivered and shrunk: ``snapshot`` then holds its run_id and
    #: the fields of updates accepted since, not the whole run.
    complete: bool = True


#: Event ids per ``IN (...)`` read (older SQLite builds take at most 999 parameters).
_READ_CHUNK = 500


class _Run:
    """One run while a group is classified: its row as read, then as the group leaves it."""

    __slots__ = ("_snapshot", "_text", "added", "state")

    def __init__(self, text: str | None, state: int | None) -> None:
        self._text = text
        self._snapshot: dict[str, Any] | None = None
        self.state = state  #: has_create; None while the run is unknown here
        self.added = 0  #: operations of the group recorded for it (its pending increment)

    def snapshot(self) -> dict[str, Any]:
        if self._snapshot is None:
            self._snapshot = orjson.loads(self._text) if self._text is not None else {}
        return self._snapshot

    def _fold(self, snapshot: dict[str, Any], state: int) -> str | None:
        self._snapshot, self.state = snapshot, state
        self.added += 1
        return snapshot.get("run_id")

    def record(self, op: dict[str, Any], verified: bool) -> tuple[Outcome, str | None]:
        """``RunsIndex.record``'s classification, on this run's state in memory."""
        known = self.state is not None
        if op["kind"] == "create":
            if self.state == CREATED:
                return "duplicate", self.snapshot().get("run_id")
            snapshot = dict(op["body"])
            if known:  # updates accepted before the create reached us
                snapshot.update(self.snapshot())
            return "created", self._fold(snapshot, CREATED)
        unconfirmed = bool(op.get("unconfirmed"))
        if not known or (self.state == UNCONFIRMED and not verified):
            # Unknown here, or known only from updates queued while nobody could confirm
            # the run: the caller asks the server (again).
            if not verified:
                return "unknown", None
            snapshot = self.snapshot()
            fold_known(snapshot, op)
            state = UNCONFIRMED if unconfirmed else CONFIRMED
            if self.state == CONFIRMED:
                state = CONFIRMED
            return "accepted", self._fold(snapshot, state)
        snapshot = self.snapshot()
        fold_known(snapshot, op)
        assert self.state is not None
        state = self.state if not (self.state == UNCONFIRMED and not unconfirmed) else CONFIRMED
        return "accepted", self._fold(snapshot, state)


class RunsIndex:
    """One connection per instance; the accept thread and reader use separate instances."""

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        synchronous: Synchronous = "NORMAL",
        yields: bool = False,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._synchronous = synchronous
        #: Write transactions wait for the gate; ``yields``: behind the accept path's.
        self.gate = write_gate(path)
        self._wal_sync = WalSync(path)
        self._yields = yields
        self._holding = False
        #: ``get`` runs on pool threads (a request cancelled at a stop leaves its thread
        #: running), and so do the pruner's ``prune`` and ``copy_wal`` (its task cancelled
        #: at a stop): ``close`` waits for them, as closing under a statement crashes.
        self._use = threading.Lock()
        #: Set by ``close``: a prune pass running on another thread ends at its next slice
        #: (``close`` then waits for it, as for a ``get``).
        self._closing = threading.Event()
        self._conn = connect(
            path,
            busy_timeout_ms=INDEX_BUSY_TIMEOUT_MS,
            # ``readonly`` (the operator's look) configures nothing and creates nothing.
            journal_mode=None if readonly else "WAL",
            synchronous=None if readonly else synchronous,
            pragmas=() if readonly else (f"journal_size_limit = {WAL_SIZE_LIMIT_BYTES}",),
        )
        try:
            if not readonly:
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                self._add_columns()
                self._conn.executemany(
                    "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)",
                    [(name,) for name in (*COUNTERS, *RECOVERY_COUNTERS)],
                )
        except BaseException:  # a damaged file: leave nothing open, the caller sets it aside
            self._conn.close()
            raise

    def _add_columns(self) -> None:
        """Upgrade an index from an older spoold, in one commit: add the new columns and
        shrink its settled runs (it cannot know their dead letters: replay treats a letter
        whose fields a shrunk snapshot lacks as unverified)."""
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(runs)")}
        missing = [name for name in _ADDED_COLUMNS if name not in have]
        if not missing:
            return
        self.begin()
        try:
            for name in missing:
                self._conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {_ADDED_COLUMNS[name]}")
            self._conn.execute(_SHRINK_SETTLED)
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def synchronous(self) -> int:
        """This connection's ``PRAGMA synchronous`` (1 NORMAL, 2 FULL)."""
        return int(self._conn.execute("PRAGMA synchronous").fetchone()[0])

    def close(self) -> None:
        """Close the connection once no other thread uses it; past ``CLOSE_WAIT_S`` (a
        prune slice waiting for the write gate and the busy timeout) it is left to the
        process's exit, logged, rather than closed under a statement or waited for past
        the stop's deadline."""
        self._closing.set()
        self._wal_sync.close()
        if not self._use.acquire(timeout=CLOSE_WAIT_S):
            log.warning("runs_index_close_abandoned", path=str(self.path), waited_s=CLOSE_WAIT_S)
            return
        try:
            self._conn.close()  # an open transaction is rolled back: let go of the gate too
        finally:
            self._use.release()
        if self._holding:
            self._holding = False
            self.gate.release()

    # ---- the accept thread ---------------------------------------------------------

    def begin(self) -> None:
        self.gate.acquire(urgent=not self._yields)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.gate.release()
            raise
        self._holding = True

    def commit(self) -> None:
        self._conn.execute("COMMIT")  # a failed commit is rolled back by the caller
        self._let_go()

    def rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        finally:
            self._let_go()

    def _let_go(self) -> None:
        if self._holding and not self._conn.in_transaction:
            self._holding = False
            self.gate.release()

    def record(self, op: dict[str, Any], *, verified: bool) -> tuple[Outcome, str | None]:
        """Classify one operation and fold it into the run's snapshot (inside begin/commit).

        ``verified`` marks an update the caller confirmed (the server knows the
        run, or could not be asked): it is recorded even for an unknown run.
        """
        return self.record_group([(op, verified)])[0]

    def record_group(
        self, ops: Sequence[tuple[dict[str, Any], bool]]
    ) -> list[tuple[Outcome, str | None]]:
        """``record`` each (operation, verified) in turn (inside begin/commit): one read of
        the group's runs, the operations folded in memory, one write per run. The outcomes
        and rows are those of recording the operations one by one; the statements per
        operation (and the GIL hand-offs each costs) are gone."""
        known = self._rows({op["event_id"] for op, _ in ops})
        runs: dict[str, _Run] = {}
        results: list[tuple[Outcome, str | None]] = []
        for op, verified in ops:
            event_id = op["event_id"]
            run = runs.get(event_id)
            if run is None:
                run = runs[event_id] = _Run(*known.get(event_id, (None, None)))
            results.append(run.record(op, verified))
        now = time.time()
        self._conn.executemany(
            "INSERT INTO runs (event_id, snapshot, has_create, pending, touched_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(event_id) DO UPDATE SET"
            " snapshot = excluded.snapshot, has_create = excluded.has_create,"
            " pending = runs.pending + excluded.pending, touched_at = excluded.touched_at",
            [
                (event_id, orjson.dumps(run.snapshot()).decode(), run.state, run.added, now)
                for event_id, run in runs.items()
                if run.added
            ],
        )
        return results

    def _rows(self, event_ids: set[str]) -> dict[str, tuple[str, int]]:
        """(snapshot, has_create) of the known runs among ``event_ids``."""
        wanted = list(event_ids)
        found: dict[str, tuple[str, int]] = {}
        for start in range(0, len(wanted), _READ_CHUNK):
            chunk = wanted[start : start + _READ_CHUNK]
            marks = ",".join("?" * len(chunk))
            for event_id, snapshot, has_create in self._conn.execute(
                f"SELECT event_id, snapshot, has_create FROM runs WHERE event_id IN ({marks})",
                chunk,
            ):
                found[event_id] = (snapshot, has_create)
        return found

    def _upsert(
        self, event_id: str, snapshot: dict[str, Any], *, has_create: int, now: float
    ) -> None:
        self._conn.execute(
            "INSERT INTO runs (event_id, snapshot, has_create, pending, touched_at)"
            " VALUES (?, ?, ?, 1, ?) ON CONFLICT(event_id) DO UPDATE SET"
            " snapshot = excluded.snapshot, has_create = excluded.has_create,"
            " pending = runs.pending + 1, touched_at = excluded.touched_at",
            (event_id, orjson.dumps(snapshot).decode(), int(has_create), now),
        )

    def fold_spooled(self, item_id: int, ops: list[dict[str, Any]]) -> None:
        """Record a spool item whose index commit was lost (crash, full disk): its own commit.

        Every operation in it is queued and will be forwarded, whatever the index
        said before, so each one counts as accepted and pending.
        """
        now = time.time()
        self.begin()
        try:
            for op in ops:
                row = self._conn.execute(
                    "SELECT snapshot, has_create FROM runs WHERE event_id = ?", (op["event_id"],)
                ).fetchone()
                snapshot = orjson.loads(row[0]) if row is not None else {}
                if op["kind"] == "create":
                    snapshot = {**op["body"], **snapshot}
                    state = CREATED
                else:
                    fold_known(snapshot, op)
                    state = (
                        row[1]
                        if row is not None
                        else (UNCONFIRMED if op.get("unconfirmed") else CONFIRMED)
                    )
                self._upsert(op["event_id"], snapshot, has_create=state, now=now)
            self.add_counter("accepted", len(ops))
            self.mark_spooled(item_id)
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def mark_spooled(self, item_id: int) -> None:
        """Inside the accept transaction: spool items up to ``item_id`` are recorded here."""
        self._set_mark(LAST_SPOOLED, str(item_id))

    def last_spooled_id(self) -> int:
        return int(self._mark(LAST_SPOOLED) or 0)

    def settling_ids(self) -> list[int]:
        """Spool items of the last settle: delivered, perhaps not yet acked in the spool."""
        return self.settling().ids

    def settling(self) -> Settling:
        """The last settle's mark: its spool items, and how far a sliced one got."""
        return Settling.decoded(self._mark(SETTLING))

    def spool_id(self) -> str | None:
        """The identity of the spool file the marks are about (None: not recorded yet)."""
        return self._mark(SPOOL_ID)

    def adopt_spool(self, spool_id: str, last_spooled_id: int | None) -> None:
        """Record which spool file the marks are about (a new index, or one from before
        identities: then ``last_spooled_id`` says what it had already recorded)."""
        self.begin()
        try:
            self._set_mark(SPOOL_ID, spool_id)
            if last_spooled_id is not None:
                self.mark_spooled(last_spooled_id)
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def spool_replaced(self, spool_id: str, lost_ops: int) -> int:
        """The spool file was replaced (a corrupt one set aside): in ONE commit, forget the
        runs with operations pending, count the ``lost_ops`` as dead-lettered and
        ``quarantined``, and point the marks at the new file. Returns the runs forgotten.

        A crash before the commit repeats it at the next start; after it, nothing is left
        half done. A re-sent create of a forgotten run is ``created`` and forwarded again.
        """
        self.begin()
        try:
            removed = int(self._conn.execute("DELETE FROM runs WHERE pending > 0").rowcount)
            self.add_counter("dead_lettered", lost_ops)
            self.add_counter("quarantined", lost_ops)
            self.add_counter("spool_resets", 1)
            self._set_mark(SPOOL_ID, spool_id)
            self.mark_spooled(0)
            self._set_mark(SETTLING, "[]")
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return removed

    def has_recorded_spool_items(self) -> bool:
        """Whether a last_spooled_id mark exists (indexes from before marks have none)."""
        return self._mark(LAST_SPOOLED) is not None

    def _mark(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row is not None else None

    def _set_mark(self, name: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO marks (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def count_now(self, name: str, amount: int) -> None:
        """Add to a counter in a commit of its own (outside the accept and drain cycles)."""
        self.begin()
        try:
            self.add_counter(name, amount)
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def recount_pending(self, spooled: Iterable[list[dict[str, Any]]], left_queue: int) -> None:
        """Make ``pending`` what the spool holds, in one commit; ``left_queue`` operations
        the index still counted as queued are counted as forwarded.

        For an index that lost settles whose spool acks were kept (or an old copy put
        back): its runs would stay "pending" and be answered from stale local state.
        ``spooled`` yields the live spool items' operations, a chunk at a time.
        """
        now = time.time()
        self.begin()
        try:
            self._conn.execute("UPDATE runs SET pending = 0 WHERE pending > 0")
            for ops in spooled:
                for event_id, n in op_counts(ops).items():
                    self._conn.execute(
                        "UPDATE runs SET pending = pending + ?, touched_at = ? WHERE event_id = ?",
                        (n, now, event_id),
                    )
            self._conn.execute(_SHRINK_SETTLED)  # runs whose settles were lost
            self.add_counter("forwarded", left_queue)
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def add_counter(self, name: str, amount: int) -> None:
        if amount:
            self._conn.execute(
                "UPDATE counters SET value = value + ? WHERE name = ?", (amount, name)
            )

    def settle(
        self,
        forwarded: dict[str, int],
        dead_lettered: dict[str, int],
        item_ids: Iterable[int] = (),
    ) -> None:
        """Operations left the queue: forwarded to the server or dead-lettered.

        ``item_ids`` are the spool items they came from; kept until the next settle
        so that a crash before the spool ack does not count them twice. A run left with
        nothing pending and no dead letter shrinks (module docstring) in the same commit.
        """
        self.settle_slice(forwarded, dead_lettered, Settling(sorted(item_ids)))

    def settle_slice(
        self,
        forwarded: dict[str, int],
        dead_lettered: dict[str, int],
        mark: Settling,
        *,
        durable: bool = True,
    ) -> None:
        """Settle a slice of a round, in one commit that also writes ``mark`` (the round's
        items and the operations settled so far, this slice included).

        The commit itself never fsyncs (synchronous=NORMAL), so the write gate is held
        only while the rows change, never for a disk flush: the accept path's next commit
        goes right after it. ``durable`` then fsyncs the WAL (``sync``) once the gate is
        released, before returning. A power loss can only drop a tail of slices with
        their marks; the spool ack follows the ``sync`` after the last.
        """
        with self._not_fsyncing():
            self._settle(forwarded, dead_lettered, mark)
        if durable:
            self.sync()

    def sync(self) -> None:
        """Put every commit made so far on disk (an fsync of the WAL, no lock held):
        what a FULL commit does inside the write lock (``server.sqlite.wal_sync``). Once
        an fsync failed, every later call fails (until a restart)."""
        self._wal_sync.sync()

    def _settle(
        self, forwarded: dict[str, int], dead_lettered: dict[str, int], mark: Settling
    ) -> None:
        self.begin()
        try:
            for counts in (forwarded, dead_lettered):
                self._conn.executemany(
                    "UPDATE runs SET pending = MAX(0, pending - ?) WHERE event_id = ?",
                    [(n, event_id) for event_id, n in counts.items()],
                )
            self._conn.executemany(
                "UPDATE runs SET letters = 1 WHERE event_id = ?",
                [(event_id,) for event_id in dead_lettered],
            )
            self._conn.executemany(
                _SHRINK, [(event_id,) for event_id in forwarded if event_id not in dead_lettered]
            )
            self.add_counter("forwarded", sum(forwarded.values()))
            self.add_counter("dead_lettered", sum(dead_lettered.values()))
            self._set_mark(SETTLING, mark.encoded())
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def prune(
        self,
        *,
        keep_s: float,
        max_bytes: int | None = None,
        backlog_bytes: int = 0,
        max_rows: int = PRUNE_MAX_ROWS,
        max_bound_rows: int = PRUNE_MAX_BOUND_ROWS,
    ) -> int:
        """Forget settled runs not touched for keep_s seconds (at most ``max_rows``), then,
        while the index holds more than ``max_bytes`` besides the backlog's rows, the oldest
        settled ones (at most ``max_bound_rows``; a run with operations pending is never
        forgotten).

        ``backlog_bytes`` is the spool's bytes of queued operations: the bound is over
        delivered runs, so the backlog's rows (estimated from it) are allowed on top. Without
        that, a large backlog alone passes the bound and every pass forgets delivered runs
        by the hundred thousand (a random delete each in the event_id index, ~4 KiB of WAL a
        run) without ever meeting it.

        Its commits are not fsync'd: give it a connection no other thread settles on. A
        ``close`` from another thread (a stop while a pass runs on a thread whose task was
        cancelled) ends the pass at its next slice, and waits for it."""
        cutoff = time.time() - keep_s
        with self._use:
            if self._closing.is_set():
                return 0
            removed = self._delete_settled(
                "WHERE pending = 0 AND touched_at < ? LIMIT ?", (cutoff,), max_rows
            )
            if max_bytes is not None:
                allowed = int(max_bytes * 0.9) + int(
                    backlog_bytes * BACKLOG_ROW_BYTES_PER_SPOOL_BYTE
                )
                removed += self._prune_to(allowed, max_rows=max_bound_rows)
        return removed

    def _prune_to(self, allowed_bytes: int, *, max_rows: int) -> int:
        """Forget the oldest settled runs until the used pages fit ``allowed_bytes``: a few
        passes, each forgetting the rows the excess is estimated to hold (from the mean
        row's share of the used bytes), at most ``max_rows`` in all."""
        removed = 0
        for _ in range(8):
            if self._closing.is_set():
                break
            used = self.used_bytes()
            rows = self.known_count()
            if used <= allowed_bytes or rows == 0 or removed >= max_rows:
                break
            excess = used - allowed_bytes
            count = min(max_rows - removed, max(100, -(-excess * rows // used)))
            deleted = self._delete_settled(
                "WHERE pending = 0 ORDER BY touched_at LIMIT ?", (), count
            )
            if deleted <= 0:  # only pending runs left: the backlog, not bounded here
                break
            removed += deleted
        return removed

    def _delete_settled(self, where: str, params: tuple[Any, ...], count: int) -> int:
        """Delete up to ``count`` runs chosen by ``where`` (ending in ``LIMIT ?``), in short
        write transactions of at most ``PRUNE_SLICE_ROWS``: the accept path never waits
        behind a long delete."""
        removed = 0
        with self._not_fsyncing():  # forgetting is redone after a crash: no fsync each time
            while removed < count and not self._closing.is_set():
                limit = min(PRUNE_SLICE_ROWS, count - removed)
                self.begin()
                try:
                    cursor = self._conn.execute(
                        f"DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs {where})",
                        (*params, limit),
                    )
                    self.commit()
                except BaseException:
                    self.rollback()
                    raise
                removed += max(0, int(cursor.rowcount))
                if cursor.rowcount < limit:
                    break
        return removed

    @contextlib.contextmanager
    def _not_fsyncing(self) -> Iterator[None]:
        """Commit with synchronous=NORMAL meanwhile (a FULL connection's next FULL commit
        fsyncs the WAL with these)."""
        if self._synchronous != "FULL":
            yield
            return
        self._conn.execute("PRAGMA synchronous = NORMAL")
        try:
            yield
        finally:
            self._conn.execute("PRAGMA synchronous = FULL")

    def used_bytes(self) -> int:
        """Bytes of the pages in use (the file's free pages are reused before it grows)."""
        page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page_size

    # ---- readers ---------------------------------------------------------------------

    def get(self, event_id: str) -> KnownRun | None:
        with self._use:
            row = self._conn.execute(
                "SELECT snapshot, has_create, pending, complete FROM runs WHERE event_id = ?",
                (event_id,),
            ).fetchone()
        if row is None:
            return None
        return KnownRun(
            event_id, orjson.loads(row[0]), row[1] == CREATED, int(row[2]), bool(row[3])
        )

    def counters(self) -> dict[str, int]:
        return {
            str(name): int(value)
            for name, value in self._conn.execute("SELECT name, value FROM counters")
        }

    def known_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def copy_wal(self) -> bool:
        """Copy the WAL into the database on this connection, outside a transaction
        (PASSIVE: waits on no one); whether every frame is now copied, so that the next
        write transaction (this connection's or another's) starts the WAL over. Under
        ``_use``: the pruner's copy can outlive its cancelled task, and ``close`` waits
        for it (or finds the index closing and copies nothing)."""
        with self._use:
            if self._closing.is_set():
                return False
            row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        busy, frames, copied = row
        return not busy and frames >= 0 and copied == frames

    def wal_autocheckpoint(self, pages: int | None = None) -> int:
        """Set (if ``pages`` is given) and return this connection's auto-checkpoint mark;
        0: its commits never checkpoint (the accept path's, see ``spoold.accept``)."""
        if pages is not None:
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
        return int(self._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


def op_counts(ops: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Operations per event_id."""
    counts: dict[str, int] = {}
    for op in ops:
        counts[op["event_id"]] = counts.get(op["event_id"], 0) + 1
    return counts
