"""Answering a stats query from the rollups and, where they cannot, from the runs.

A query is split into parts that each give partial aggregates per (group, status,
duration bucket), merged in Python:

- finished runs in the window's whole UTC days: ``run_stats_daily``; in the whole
  hours of its partial first and last days (or of the window, grouping by hour):
  ``run_stats_hourly`` (see ``plan``);
- finished runs in the partial hours at the window's two ends: the runs, through the
  start_time index;
- running runs: the runs, through the partial index of running runs;
- a query the rollups cannot answer (an agent filter or grouping, a created_at bound):
  the runs alone, through the start_time index when there is a window.

Percentiles come from the duration histogram (``rollups.duration_bucket_floors``), the
same for every part, so one query never mixes exact and approximate figures.
"""

from __future__ import annotations

import bisect
import itertools
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from server.contract.fields import CANONICAL_STATUSES
from server.contract.stats import StatsQuery
from server.storage.rollups import (
    BUCKETS_PER_DOUBLING,
    DAILY,
    EXACT_BELOW_MS,
    HOURLY,
    RUNNING_INDEX,
    Grain,
    duration_bucket_floors,
)
from server.storage.runs import Overdue, filter_terms, snapshot
from server.storage.schema import START_TIME_INDEX

#: Most groups one answer holds; more is a 422 asking for a narrower query.
MAX_GROUPS = 10_000
_FLOORS = duration_bucket_floors()
_FLOOR_TEXTS = tuple(str(floor) for floor in _FLOORS)

_KEY_SQL = {
    "agent_name": "agent_name",
    "job_type": "job_type",
    "status": "status",
    "day": "substr(start_time, 1, 10)",
    "hour": "substr(start_time, 1, 13)",
}
_HAS_DURATION = "status != 'running' AND duration_ms >= 1"


class TooManyGroups(ValueError):
    """The answer would hold more than MAX_GROUPS groups."""


@dataclass
class _Group:
    runs: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    #: Runs per duration bucket, keyed by the bucket's floor as text (as the rollups' JSON).
    hist: dict[str, int] = field(default_factory=dict)
    duration_max: int | None = None
    discovered: float = 0
    succeeded: float = 0
    failed: float = 0
    first_start: str | None = None
    last_start: str | None = None

    def add(
        self,
        status: str,
        runs: int,
        items: tuple[object, object, object],
        starts: tuple[str, str],
        duration_max: object,
        hist: dict[str, int],
    ) -> None:
        self.runs += runs
        self.by_status[status] = self.by_status.get(status, 0) + runs
        self.discovered += _number(items[0])
        self.succeeded += _number(items[1])
        self.failed += _number(items[2])
        first, last = str(starts[0]), str(starts[1])
        if self.first_start is None or first < self.first_start:
            self.first_start = first
        if self.last_start is None or last > self.last_start:
            self.last_start = last
        # Not an integer only if written by something else than the server: never a 500.
        if isinstance(duration_max, int | float) and (
            self.duration_max is None or duration_max > self.duration_max
        ):
            self.duration_max = int(duration_max)
        mine = self.hist
        for floor, count in hist.items():
            mine[floor] = mine.get(floor, 0) + count


def _number(value: object) -> float:
    """A counter as stored: text or a BLOB only if another writer put it there (as 0)."""
    return value if isinstance(value, int | float) else 0


def _total(value: float) -> float:
    """An item total as JSON can carry it: an integer while it fits 64 bits (SQLite's own
    totals turn to REAL past that), else the float (each run may count up to 2**63-1)."""
    whole = int(value)
    return whole if -(2**63) <= whole < 2**63 else float(value)


def representative(floor: int) -> int:
    """The value a bucket reports: its geometric middle (exact for 1-ms buckets)."""
    index = bisect.bisect_left(_FLOORS, floor)
    if index + 1 >= len(_FLOORS):
        return floor
    high = _FLOORS[index + 1] - 1
    return round(math.sqrt(floor * high))


def _max_error() -> float:
    """Largest relative error of a reported value, over every bucket's both ends."""
    return max(
        abs(representative(low) - value) / value
        for low, high in itertools.pairwise(_FLOORS)
        for value in (low, high - 1)
    )


#: Largest relative error of a reported percentile (see ``representative``).
PERCENTILE_MAX_ERROR = _max_error()
PERCENTILES_NOTE = (
    f"Nearest-rank p50/p95 over a log-scale histogram: exact below {EXACT_BELOW_MS} ms, "
    f"then {BUCKETS_PER_DOUBLING} buckets per doubling, each reported at its geometric "
    f"middle (at most {PERCENTILE_MAX_ERROR:.1%} off, never above max)."
)


def percentile(hist: dict[int, int], total: int, fraction: float, ceiling: int) -> int | None:
    """Nearest-rank percentile of a histogram, capped at the exact maximum."""
    return percentiles(sorted(hist.items()), total, (fraction,), ceiling)[0]


def percentiles(
    ordered: list[tuple[int, int]], total: int, fractions: tuple[float, ...], ceiling: int
) -> list[int | None]:
    """Nearest-rank percentiles of a histogram sorted by bucket, capped at the maximum."""
    if total <= 0:
        return [None] * len(fractions)
    found: list[int | None] = []
    seen = 0
    position = 0
    for fraction in fractions:  # ascending
        rank = max(1, math.ceil(fraction * total))
        while position < len(ordered) and seen + ordered[position][1] < rank:
            seen += ordered[position][1]
            position += 1
        floor = ordered[position][0] if position < len(ordered) else None
        found.append(ceiling if floor is None else min(representative(floor), ceiling))
    return found


class StatsParts:
    """Partial aggregates, merged by group key."""

    def __init__(self, group_by: list[str]) -> None:
        self.group_by = group_by
        self.groups: dict[tuple[str, ...], _Group] = {}

    def group(self, key: tuple[str, ...]) -> _Group:
        found = self.groups.get(key)
        if found is None:
            if len(self.groups) >= MAX_GROUPS:
                raise TooManyGroups(
                    f"more than {MAX_GROUPS:,} groups: narrow the window or the filters, "
                    "or group by fewer keys"
                )
            found = self.groups[key] = _Group()
        return found

    def add_raw(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rows of ``_raw_sql``: the key columns, then status, counts, durations."""
        width = len(self.group_by)
        for row in rows:
            key = tuple(str(value) for value in row[:width])
            status, runs, disc, succ, fail, first, last, longest, durations = row[width:]
            hist: dict[str, int] = {}
            for value in durations.split(",") if durations else ():
                floor = _FLOOR_TEXTS[bisect.bisect_right(_FLOORS, int(value)) - 1]
                hist[floor] = hist.get(floor, 0) + 1
            self.group(key).add(status, int(runs), (disc, succ, fail), (first, last), longest, hist)

    def answer(self) -> list[dict[str, Any]]:
        groups = []
        for key in sorted(self.groups):
            group = self.groups[key]
            finished = group.runs - group.by_status.get("running", 0)
            durations = sum(group.hist.values())
            ceiling = group.duration_max if group.duration_max is not None else 0
            ordered = sorted((int(floor), count) for floor, count in group.hist.items())
            p50, p95 = percentiles(ordered, durations, (0.50, 0.95), ceiling)
            groups.append(
                {
                    "key": dict(
                        zip(
                            self.group_by,
                            (_shown(k, v) for k, v in zip(self.group_by, key, strict=True)),
                            strict=True,
                        )
                    ),
                    "runs": group.runs,
                    "by_status": {s: group.by_status.get(s, 0) for s in CANONICAL_STATUSES},
                    "success_rate": (
                        round(group.by_status.get("success", 0) / finished, 6) if finished else None
                    ),
                    "duration_ms": {
                        "count": durations,
                        "p50": p50,
                        "p95": p95,
                        "max": group.duration_max,
                    },
                    "items": {
                        "discovered": _total(group.discovered),
                        "succeeded": _total(group.succeeded),
                        "failed": _total(group.failed),
                    },
                    "first_start": group.first_start,
                    "last_start": group.last_start,
                }
            )
        return groups


def _shown(name: str, value: str) -> str:
    """An hour key as the instant it starts (``2026-06-01T13:00:00+00:00``)."""
    return f"{value}:00:00+00:00" if name == "hour" else value


def _filters(
    query: StatsQuery, *, running: bool | None, overdue: Overdue | None = None
) -> tuple[list[str], list[Any]]:
    """WHERE terms and parameters for the query's filters (the window excepted);
    ``running`` True/False restricts to running / finished runs; ``overdue`` (with
    ``stale=true``) to the overdue runs."""
    terms: list[str] = []
    params: list[Any] = []
    if overdue is not None:
        terms.append(f"id IN ({overdue[0]})")
        params += overdue[1]
    shared, shared_params = filter_terms(query)
    terms += shared
    params += shared_params
    if running is True:
        terms.append("status = 'running'")  # a literal: it selects the partial index
    elif running is False:
        terms.append("status != 'running'")
    return terms, params


def _raw_sql(
    group_by: list[str], terms: list[str], index: str | None, *, durations: bool = True
) -> str:
    """Partial aggregates of runs; without ``durations`` (running runs only, which have
    none in stats) it reads no duration_ms, so ``RUNNING_INDEX`` covers it."""
    keys = [_KEY_SQL[name] for name in group_by]
    # The durations themselves, bucketed in Python: half the cost of a bucket look-up
    # per run in SQL (and of grouping by it), measured over a day of a 1M-run fleet.
    each = f"group_concat(CASE WHEN {_HAS_DURATION} THEN CAST(duration_ms AS INTEGER) END)"
    longest = f"max(CASE WHEN {_HAS_DURATION} THEN duration_ms END)"
    if not durations:
        each = longest = "NULL"
    indexed = f" INDEXED BY {index}" if index else ""
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    columns = ", ".join(
        (
            *keys,
            "status",
            "count(*)",
            "total(items_discovered)",
            "total(items_succeeded)",
            "total(items_failed)",
            "min(start_time)",
            "max(start_time)",
            longest,
            each,
        )
    )
    grouped = ", ".join((*keys, "status"))
    return f"SELECT {columns} FROM agent_runs{indexed}{where} GROUP BY {grouped}"


def _read_raw(
    conn: sqlite3.Connection,
    parts: StatsParts,
    query: StatsQuery,
    *,
    window: Span,
    running: bool | None,
    index: str | None,
    overdue: Overdue | None = None,
) -> None:
    """Aggregates read from the runs in ``window`` (inclusive bounds)."""
    terms, params = _filters(query, running=running, overdue=overdue)
    low, high = window
    if low is not None:
        terms.append("start_time >= ?")
        params.append(low)
    if high is not None:
        terms.append("start_time <= ?")
        params.append(high)
    if low is None and high is None and index == START_TIME_INDEX:
        index = None  # no window: the planner picks the filters' index
    sql = _raw_sql(parts.group_by, terms, index, durations=running is not True)
    parts.add_raw(conn.execute(sql, params))


def rollups_serve(query: StatsQuery) -> bool:
    """Whether the rollups can answer the query's finished runs (they keep no agent, no
    created_at, and no staleness)."""
    return (
        query.stale is None
        and query.agent_name is None
        and query.created_before is None
        and query.created_after is None
        and "agent_name" not in query.group_by
    )


#: An inclusive window of canonical instants; None is unbounded on that side.
Span = tuple[str | None, str | None]
#: Whole cells of one grain: (first key, key past the last), None unbounded.
Cells = tuple[Grain, str | None, str | None]
_MICROSECOND = timedelta(microseconds=1)


def _parse(instant: str) -> datetime:
    return datetime.fromisoformat(instant)


def _format(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _unit_start(moment: datetime, grain: Grain) -> datetime:
    if grain is DAILY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def _unit(grain: Grain) -> timedelta:
    return timedelta(days=1) if grain is DAILY else timedelta(hours=1)


def split(window: Span, grain: Grain) -> tuple[Cells | None, list[Span]]:
    """The whole ``grain`` cells inside ``window`` and the spans left over at its ends."""
    low, high = window
    first_key = last_key = None
    rest: list[Span] = []
    if low is not None:
        moment = _parse(low)
        first = _unit_start(moment, grain)
        if first != moment:
            try:
                first += _unit(grain)
            except OverflowError:  # in the calendar's last unit: no whole cell
                return None, [window]
            rest.append((low, _format(first - _MICROSECOND)))
        first_key = _format(first)[: grain.length]
    if high is not None:
        past: datetime | None
        try:
            past = _parse(high) + _MICROSECOND
        except OverflowError:  # the last instant there is: unbounded, in effect
            past = None
        if past is not None:
            end = _unit_start(past, grain)
            last_key = _format(end)[: grain.length]
            if end != past:
                rest.append((_format(end), high))
    if first_key is not None and last_key is not None and first_key >= last_key:
        return None, [window]  # no whole cell: the window is one span
    return (grain, first_key, last_key), rest


def plan(window: Span, group_by: list[str]) -> tuple[list[Cells], list[Span]]:
    """Cells of the rollups and spans of runs that together are exactly the window: whole
    days, then whole hours at the ends, then the rest (hours only when grouping by hour)."""
    cells: list[Cells] = []
    spans: list[Span] = []
    pending = [window]
    if "hour" not in group_by:
        days, pending = split(window, DAILY)
        cells += [days] if days else []
    for span in pending:
        hours, rest = split(span, HOURLY)
        cells += [hours] if hours else []
        spans += rest
    return cells, spans


def _read_cells(
    conn: sqlite3.Connection, parts: StatsParts, query: StatsQuery, cells: Cells
) -> None:
    grain, first, past = cells
    terms, params = [], []
    for column, value in (("job_type", query.job_type), ("status", query.status)):
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    for operator, bound in ((">=", first), ("<", past)):
        if bound is not None:
            terms.append(f"{grain.key} {operator} ?")
            params.append(bound)
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    sql = (
        f"SELECT {grain.key}, job_type, status, runs, duration_hist, duration_max,"
        " items_discovered, items_succeeded, items_failed, first_start, last_start,"
        f" stale_bounds FROM {grain.table}{where}"
    )
    rows = conn.execute(sql, params).fetchall()
    bounds = _stale_bounds(conn, grain, {row[0] for row in rows if row[11]})
    for row in rows:
        cell, job_type, status, runs, hist_text, longest, disc, succ, fail, first_start = row[:10]
        last_start, stale = row[10:]
        if stale:
            first_start, last_start, longest = bounds.get((job_type, status), {}).get(
                cell, (first_start, last_start, longest)
            )
        named = {"day": cell[:10], "hour": cell, "job_type": job_type, "status": status}
        key = tuple(str(named[name]) for name in parts.group_by)
        hist = orjson.loads(hist_text)
        parts.group(key).add(
            status, int(runs), (disc, succ, fail), (first_start, last_start), longest, hist
        )


_Bounds = tuple[Any, Any, Any]


def _stale_bounds(
    conn: sqlite3.Connection, grain: Grain, cells: set[str]
) -> dict[tuple[str, str], dict[str, _Bounds]]:
    """First and last start and longest duration, from the runs, of every (job_type,
    status) in the cells that hold a stale one: one read of each such day or hour (a
    prune stopping mid-day leaves a whole day's cells stale)."""
    found: dict[tuple[str, str], dict[str, _Bounds]] = {}
    for cell in sorted(cells):
        start = _parse(f"{cell}T00:00:00+00:00" if grain is DAILY else f"{cell}:00:00+00:00")
        rows = conn.execute(
            f"SELECT job_type, status, min(start_time), max(start_time), max(CASE WHEN"
            f" {_HAS_DURATION} THEN duration_ms END) FROM agent_runs INDEXED BY"
            f" {START_TIME_INDEX} WHERE start_time >= ? AND start_time <= ?"
            " AND status != 'running' GROUP BY job_type, status",
            (_format(start), _format(start + _unit(grain) - _MICROSECOND)),
        )
        for job_type, status, first, last, longest in rows:
            found.setdefault((job_type, status), {})[cell] = (first, last, longest)
    return found


def compute_stats(
    conn: sqlite3.Connection,
    query: StatsQuery,
    *,
    use_rollups: bool = True,
    raw_index: str | None = START_TIME_INDEX,
    overdue: Overdue | None = None,
) -> list[dict[str, Any]]:
    """The answer's groups; run it in one read transaction (the parts must agree).
    ``use_rollups=False`` reads the runs alone (the index-only design, for comparison).
    ``overdue`` (``stale.overdue_ids_sql``) serves ``stale=true``, required with it."""
    parts = StatsParts(list(query.group_by))
    window = (query.start_time_from, query.start_time_to)
    if query.stale is not None:  # a few running runs, by the reaper's own indexes
        if overdue is None:
            raise ValueError("a stale=true query needs the overdue-runs query")
        _read_raw(conn, parts, query, window=window, running=True, index=None, overdue=overdue)
        return parts.answer()
    if not (use_rollups and rollups_serve(query)):
        _read_raw(conn, parts, query, window=window, running=None, index=raw_index)
        return parts.answer()
    if query.status in (None, "running"):
        _read_raw(conn, parts, query, window=window, running=True, index=RUNNING_INDEX)
    if query.status != "running":
        cells, spans = plan(window, list(query.group_by))
        for whole in cells:
            _read_cells(conn, parts, query, whole)
        for span in spans:
            _read_raw(conn, parts, query, window=span, running=False, index=raw_index)
    return parts.answer()


def read_stats(
    conn: sqlite3.Connection, query: StatsQuery, overdue: Overdue | None = None
) -> list[dict[str, Any]]:
    """compute_stats in one read transaction (a snapshot: rollups and runs agree)."""
    with snapshot(conn):
        return compute_stats(conn, query, overdue=overdue)
