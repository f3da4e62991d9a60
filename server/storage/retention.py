"""Retention: delete finished runs older than a cut, in batches short enough for the writer.

A run is *old* when it is finished (status is not ``running``) and both its
``created_at`` and its ``COALESCE(end_time, created_at)`` are before the cut:
a run created long ago that ended yesterday is kept, so is a run whose agent
sent an old ``end_time`` only recently. ``created_at`` is the server's clock and
is indexed (``idx_runs_created``): each batch walks that index from where the
previous batch stopped (a keyset over ``(created_at, id)``), so runs that are
kept (running, recently ended) are examined once per pass, not once per batch.

Each batch is one plain ``DELETE FROM agent_runs WHERE id IN (...)`` run as an
operation of the server's single writer, so every trigger on ``agent_runs``
fires (the writer's TEMP triggers that keep the run counters and distinct
values exact, and any persistent trigger, e.g. stats rollups), and the status
check is evaluated inside the writer's transaction: a PATCH that makes a run
``running`` again either commits first (the run is kept) or after (the run is
gone and the PATCH answers 404). The batch size adapts to its measured time so
that one batch holds the writer for about ``TARGET_BATCH_S``.

Space: SQLite puts freed pages on its freelist. On a file with
``auto_vacuum = INCREMENTAL`` (new files are created so, see
``prefer_incremental_vacuum``; older ones need ``telemetry-server vacuum`` once)
a pass then returns them to the file system with ``PRAGMA incremental_vacuum(N)``
in steps of ``VACUUM_STEP_PAGES``, each its own short writer operation.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from server.contract.fields import CANONICAL_STATUSES
from server.contract.timestamps import format_instant

#: What one batch's statements should take. 50 ms is the bound of the whole transaction:
#: its COMMIT writes the pages the deletes dirtied (a run sits in eight b-trees, mostly
#: on pages of their own), measured at about as long again as the statements.
TARGET_BATCH_S = 0.015
FIRST_BATCH_ROWS = 100
MIN_BATCH_ROWS = 10
#: The cost per row varies by 3x (at 1M runs one 398-row batch took 77 ms of statements,
#: 190 us a row, where others took 63 us): a cap keeps such a batch near the 50 ms bound.
MAX_BATCH_ROWS = 200
#: A batch grows by at most this factor at a time (it shrinks by up to half): the cost
#: per row varies (cold pages, a busy machine), so approach the target from below.
MAX_GROWTH = 1.25
#: Pages the first ``incremental_vacuum`` step frees (then sized by its measured time).
VACUUM_STEP_PAGES = 32
#: Most pages one step frees: relocating a page of a large file costs from microseconds to
#: milliseconds (pointer-map and parent updates), so a step grown on cheap pages can meet
#: expensive ones (at 1M runs: 130 ms with steps up to 2,000 pages, 87 ms with 256).
VACUUM_MAX_PAGES = 64
#: A pass rests between batches for as long as the batch took (the writer is the
#: clients' at least half of the time), and at least this long.
MIN_REST_S = 0.001
#: Statuses a prune may delete: every status but running.
FINISHED_STATUSES: tuple[str, ...] = tuple(s for s in CANONICAL_STATUSES if s != "running")

_AGE = re.compile(r"^\s*([0-9]{1,6})\s*([dhw]?)\s*$")
#: The longest age a prune takes (as TELEMETRY_RETENTION_DAYS): its cut stays in the calendar.
MAX_AGE = timedelta(days=36_500)
_UNIT_DAYS = {"": 1.0, "d": 1.0, "w": 7.0, "h": 1 / 24}


class RetentionError(ValueError):
    """A bad prune request (age, statuses)."""


def parse_age(text: str) -> timedelta:
    """``90d``, ``12w``, ``36h`` or a bare number of days; at least one hour."""
    match = _AGE.match(text)
    if match is None:
        raise RetentionError(
            f"--older-than {text!r}: expected a whole number of days, weeks or hours, "
            "e.g. 90d, 12w or 36h"
        )
    age = timedelta(days=int(match.group(1)) * _UNIT_DAYS[match.group(2)])
    if age < timedelta(hours=1):
        raise RetentionError(f"--older-than {text!r}: must be at least 1 hour")
    if age > MAX_AGE:
        raise RetentionError(f"--older-than {text!r}: must be at most {MAX_AGE.days} days")
    return age


def check_statuses(statuses: Sequence[str] | None) -> tuple[str, ...]:
    """The finished statuses to delete (all of them when none are named)."""
    if not statuses:
        return FINISHED_STATUSES
    chosen = []
    for status in statuses:
        if status == "running":
            raise RetentionError("running runs are never pruned: leave 'running' out")
        if status not in FINISHED_STATUSES:
            raise RetentionError(
                f"unknown status {status!r}: expected some of {', '.join(FINISHED_STATUSES)}"
            )
        if status not in chosen:
            chosen.append(status)
    return tuple(chosen)


def cut_for(age: timedelta, now: datetime | None = None) -> str:
    """The canonical instant before which runs are old."""
    return format_instant((now or datetime.now(UTC)) - age)


@dataclass(frozen=True)
class PrunePlan:
    cut: str
    statuses: tuple[str, ...]


@dataclass
class PruneReport:
    """What a pass did (or, dry, would do)."""

    cut: str
    statuses: list[str]
    dry_run: bool
    deleted: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    max_batch_s: float = 0.0
    #: The writer thread's CPU time in that longest batch: wall time beyond it was spent
    #: waiting (another process holding the CPU, a page read), not deleting.
    max_batch_cpu_s: float = 0.0
    max_batch_rows: int = 0
    vacuumed_pages: int = 0
    max_vacuum_step_s: float = 0.0
    seconds: float = 0.0
    oldest_created_at: str | None = None
    newest_created_at: str | None = None
    #: False when the file is not in incremental auto-vacuum mode (see ``vacuum``).
    incremental_vacuum: bool = False

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["max_batch_ms"] = round(body.pop("max_batch_s") * 1000, 3)
        body["max_batch_cpu_ms"] = round(body.pop("max_batch_cpu_s") * 1000, 3)
        body["max_vacuum_step_ms"] = round(body.pop("max_vacuum_step_s") * 1000, 3)
        body["seconds"] = round(body["seconds"], 3)
        return body


@dataclass(frozen=True)
class BatchResult:
    deleted: dict[str, int]
    #: Where the next batch starts; None once the index range is walked.
    next_position: tuple[str, int] | None
    seconds: float
    cpu_seconds: float = 0.0


def _old_filter(plan: PrunePlan) -> tuple[str, list[Any]]:
    """Old and finished, beyond ``created_at < cut`` (which bounds the index walk)."""
    marks = ", ".join("?" for _ in plan.statuses)
    return (
        f"COALESCE(end_time, created_at) < ? AND status IN ({marks})",
        [plan.cut, *plan.statuses],
    )


def delete_batch(
    conn: sqlite3.Connection, plan: PrunePlan, after: tuple[str, int] | None, limit: int
) -> BatchResult:
    """One batch, on the writer's connection inside its transaction: of the next ``limit``
    runs created before the cut (index order), delete the old finished ones."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    lower, lower_params = "", list[Any]()
    if after is not None:  # one bound per side on created_at, so the walk is a range
        lower = "created_at >= ? AND (created_at, id) > (?, ?) AND "
        lower_params = [after[0], *after]
    last = conn.execute(
        f"SELECT created_at, id FROM agent_runs INDEXED BY idx_runs_created "
        f"WHERE {lower}created_at < ? ORDER BY created_at, id LIMIT 1 OFFSET ?",
        [*lower_params, plan.cut, limit - 1],
    ).fetchone()
    end: tuple[str, int] | None = None if last is None else (str(last[0]), int(last[1]))
    upper_params: list[Any]
    if end is None:
        upper, upper_params = "created_at < ?", [plan.cut]
    else:
        upper, upper_params = "created_at <= ? AND (created_at, id) <= (?, ?)", [end[0], *end]
    old, params = _old_filter(plan)
    # The plain DELETE statement (every trigger fires); its WHERE checks the status inside
    # the writer's transaction, so a run made running again is never deleted.
    statuses = conn.execute(
        f"DELETE FROM agent_runs INDEXED BY idx_runs_created WHERE {lower}{upper} AND {old} "
        "RETURNING status",
        [*lower_params, *upper_params, *params],
    ).fetchall()
    deleted: dict[str, int] = {}
    for (status,) in statuses:
        deleted[str(status)] = deleted.get(str(status), 0) + 1
    return BatchResult(
        deleted, end, time.perf_counter() - started, time.thread_time() - cpu_started
    )


def preview(conn: sqlite3.Connection, plan: PrunePlan) -> PruneReport:
    """What a pass would delete now (a read: runs on a reader connection)."""
    old, params = _old_filter(plan)
    rows = conn.execute(
        f"SELECT status, COUNT(*), MIN(created_at), MAX(created_at) "
        f"FROM agent_runs INDEXED BY idx_runs_created WHERE created_at < ? AND {old} "
        "GROUP BY status",
        [plan.cut, *params],
    ).fetchall()
    report = PruneReport(plan.cut, list(plan.statuses), dry_run=True)
    for status, n, oldest, newest in rows:
        report.by_status[str(status)] = int(n)
        report.deleted += int(n)
        report.oldest_created_at = min(filter(None, (report.oldest_created_at, oldest)))
        report.newest_created_at = max(filter(None, (report.newest_created_at, newest)))
    report.incremental_vacuum = incremental_enabled(conn)
    return report


def incremental_enabled(conn: sqlite3.Connection) -> bool:
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2


def vacuum_step(conn: sqlite3.Connection, *, pages: int = VACUUM_STEP_PAGES) -> tuple[int, float]:
    """Return up to ``pages`` free pages to the file system; (pages freed, seconds)."""
    started = time.perf_counter()
    before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    # Python's sqlite3 steps a statement without result columns once, and one step of
    # incremental_vacuum frees one page: so one statement per page.
    for _ in range(min(before, pages)):
        conn.execute("PRAGMA incremental_vacuum(1)")
    after = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return before - after, time.perf_counter() - started


def prefer_incremental_vacuum(conn: sqlite3.Connection) -> bool:
    """On a file with no tables yet, choose incremental auto-vacuum (it cannot change
    later without a full VACUUM). True if the file is (now) in that mode."""
    tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
    if not tables and not incremental_enabled(conn):
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")  # an empty file: instant; needed once WAL mode is set
    return incremental_enabled(conn)


def convert_to_incremental(conn: sqlite3.Connection) -> bool:
    """``telemetry-server vacuum``: rewrite the whole file (VACUUM) in incremental
    auto-vacuum mode, which also gives every free page back. Holds the write lock for
    the whole rewrite; False if the file was in that mode already (it is then only
    compacted)."""
    changed = not incremental_enabled(conn)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")
    # In WAL mode the rewritten file sits in the WAL until a checkpoint: fold it back now,
    # so the space comes back when the command ends, not at the server's next checkpoint.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return changed


WriteRunner = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]
Sleeper = Callable[[float], Awaitable[None]]


class BatchSizer:
    """Rows per batch, scaled so a batch takes about ``target_s`` (bounded steps)."""

    def __init__(
        self,
        target_s: float = TARGET_BATCH_S,
        first: int = FIRST_BATCH_ROWS,
        most: int = MAX_BATCH_ROWS,
    ) -> None:
        self.target_s = target_s
        self.rows = first
        self.most = most

    def observe(self, rows: int, seconds: float) -> None:
        if rows < self.rows:  # a short window (end of range) says nothing about the rate
            return
        scale = self.target_s / max(seconds, 1e-4)
        scale = min(max(scale, 0.5), MAX_GROWTH)
        self.rows = int(min(max(self.rows * scale, MIN_BATCH_ROWS), self.most))


def _batch(
    plan: PrunePlan, after: tuple[str, int] | None, limit: int, conn: sqlite3.Connection
) -> BatchResult:
    return delete_batch(conn, plan, after, limit)


async def prune_pass(
    write: WriteRunner,
    plan: PrunePlan,
    *,
    sleep: Sleeper,
    vacuum: bool = True,
    sizer: BatchSizer | None = None,
    max_vacuum_steps: int = 100_000,
) -> PruneReport:
    """Delete every old finished run through ``write`` (the server's writer), batch by
    batch, then give the freed pages back in steps."""
    started = time.monotonic()
    sizer = sizer or BatchSizer()
    report = PruneReport(plan.cut, list(plan.statuses), dry_run=False)
    after: tuple[str, int] | None = None
    while True:
        limit = sizer.rows
        result: BatchResult = await write(functools.partial(_batch, plan, after, limit))
        report.batches += 1
        for status, n in result.deleted.items():
            report.by_status[status] = report.by_status.get(status, 0) + n
            report.deleted += n
        if result.seconds > report.max_batch_s:
            report.max_batch_s, report.max_batch_cpu_s = result.seconds, result.cpu_seconds
        report.max_batch_rows = max(report.max_batch_rows, limit)
        sizer.observe(limit if result.next_position else 0, result.seconds)
        if result.next_position is None:
            break
        after = result.next_position
        await sleep(max(result.seconds, MIN_REST_S))
    report.incremental_vacuum = bool(await write(incremental_enabled))
    if vacuum and report.incremental_vacuum:
        # Moving a page can mean rewriting its parent's pointer: the cost per page varies,
        # so the step is sized like the batches (from VACUUM_STEP_PAGES, toward the target).
        steps = BatchSizer(first=VACUUM_STEP_PAGES, most=VACUUM_MAX_PAGES)
        for _ in range(max_vacuum_steps):
            pages = steps.rows
            freed, seconds = await write(functools.partial(vacuum_step, pages=pages))
            report.vacuumed_pages += freed
            report.max_vacuum_step_s = max(report.max_vacuum_step_s, seconds)
            if not freed:
                break
            steps.observe(pages if freed == pages else 0, seconds)
            await sleep(max(seconds, MIN_REST_S))
    report.seconds = time.monotonic() - started
    return report


Reader = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]


@dataclass
class RetentionTotals:
    """What every pass of this process did, for /metrics."""

    passes: int = 0
    deleted: int = 0
    vacuumed_pages: int = 0
    failed_passes: int = 0
    last_pass: dict[str, Any] | None = None


class PruneRunner(Protocol):
    """A backend's pruner (``RunStore.pruner``): SQLite's ``Pruner`` (through its writer)
    or PostgreSQL's ``server.postgres.retention.PostgresPruner``."""

    totals: RetentionTotals

    async def run(self, plan: PrunePlan, *, dry_run: bool = False) -> PruneReport: ...


class Pruner:
    """One pass at a time (the background task and an operator's request queue up)."""

    def __init__(
        self,
        write: WriteRunner,
        read: Reader,
        *,
        sleep: Sleeper,
        on_report: Callable[[PruneReport], None] | None = None,
    ) -> None:
        self._write = write
        self._read = read
        self._sleep = sleep
        self._on_report = on_report
        self._lock = asyncio.Lock()  # bound to a loop at first use (3.10+)
        self.totals = RetentionTotals()

    async def run(self, plan: PrunePlan, *, dry_run: bool = False) -> PruneReport:
        async with self._lock:
            if dry_run:
                previewed: PruneReport = await self._read(lambda conn: preview(conn, plan))
                return previewed
            try:
                report = await prune_pass(self._write, plan, sleep=self._sleep)
            except BaseException:
                self.totals.failed_passes += 1
                raise
            self.totals.passes += 1
            self.totals.deleted += report.deleted
            self.totals.vacuumed_pages += report.vacuumed_pages
            self.totals.last_pass = report.as_dict()
            if self._on_report is not None:
                self._on_report(report)
            return report
