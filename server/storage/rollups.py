"""Stats rollups of finished runs, daily and hourly, kept by SQLite triggers.

``run_stats_daily`` and ``run_stats_hourly`` hold one row per (UTC day / hour of
``start_time``, job_type, status) for the finished runs (every status but ``running``):
run count, item totals, a duration histogram, the longest duration and the first and
last start. Triggers on ``agent_runs`` keep both, so every writer (the server's writer,
the reaper, a prune, the ``sqlite3`` shell) keeps them consistent in the same
transaction as the run itself.

Why these choices (``bench/stats_bench.py`` measures them):

- Job type, not agent: a fleet's runs are spread over 2,000 agents, so a cell per agent
  holds about one run and the rollup would be as large as the table. 20 job types x 5
  statuses is ~100 cells a day (or an hour, at a busy fleet's rate).
- Days for long windows, hours for their ends: a window's whole days are read from the
  daily cells, the whole hours of its partial first and last days from the hourly ones,
  and only the partial hours at its two ends from the runs.
- Running runs stay out: a run is inserted ``running`` and finished by an update, so
  leaving them out makes the usual lifecycle one increment per table (no decrement).
  Queries read running runs from the small covering partial index ``RUNNING_INDEX``.
- Counts, sums and the histogram are exact under decrements; a minimum or maximum is
  not. When a run leaves a cell (a finished run changing status, job type, start or
  duration; a delete) and held its first or last start or its longest duration, the
  cell's ``stale_bounds`` flag is set and queries recompute those three from the
  cell's runs (``server.storage.stats``). A cell left empty is deleted.
- Durations go into log-scale buckets (``duration_bucket_floors``): exact below
  ``EXACT_BELOW_MS``, then 8 per doubling. The histogram is a JSON object
  ``{"<bucket floor ms>": count}``, merged in Python at query time.

Measured (``bench/write_cost.py --callgrind``, 100k fleet runs, the writer's TEMP
triggers installed): these triggers cost ~156k of a terminal PATCH's ~577k SQLite
instructions: ~69k per grain's upsert, of which ~37k is the JSON histogram and ~32k the
upsert itself, plus ~20k of trigger calls (a running run's insert pays ~17k for a trigger
that does nothing). Histograms as rows (one ``n = n + 1`` row per bucket, tried in
migration 9's first version) cost ~60k per grain in two upserts, saving ~20k (3.5%) of a
terminal PATCH, and made stats reads 1.4-2.3x the CPU (``bench/stats_bench.py``: tens of
thousands of bucket rows to sum where a JSON text per cell is parsed in C): the JSON stays.

The statements are defined here once (``ROLLUP_STATEMENTS``), so a later migration
that rebuilds ``agent_runs`` (which drops its triggers and indexes) re-creates the
triggers and the running runs' index with ``AFTER_REBUILD``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Durations below this many milliseconds have one bucket per millisecond (exact).
EXACT_BELOW_MS = 128
#: Buckets per doubling above EXACT_BELOW_MS.
BUCKETS_PER_DOUBLING = 8
_MAX_MS = 2**63 - 1

BUCKET_TABLE = "stats_duration_buckets"
#: Finished runs only; the partial index below serves the running ones.
RUNNING_INDEX = "idx_runs_running_start"


def duration_bucket_floors() -> tuple[int, ...]:
    """Each bucket's lowest duration in ms, ascending; a bucket ends below the next floor."""
    floors = set(range(1, EXACT_BELOW_MS))
    first = int(math.log2(EXACT_BELOW_MS) * BUCKETS_PER_DOUBLING)
    for step in range(first, 63 * BUCKETS_PER_DOUBLING + 1):
        floor = math.ceil(2 ** (step / BUCKETS_PER_DOUBLING))
        if floor <= _MAX_MS:
            floors.add(floor)
    return tuple(sorted(floors))


def bucket_sql(duration: str) -> str:
    """The bucket floor of a positive duration expression, in SQL (no math functions:
    SQLite builds without them exist), one rowid seek."""
    return f"(SELECT lo FROM {BUCKET_TABLE} WHERE lo <= {duration} ORDER BY lo DESC LIMIT 1)"


def _key(prefix: str) -> str:
    return f"'$.\"' || {bucket_sql(f'{prefix}.duration_ms')} || '\"'"


_HAS_DURATION = "{row}.duration_ms >= 1"  # >= 1: a bucket for any value (0.5 has none)


@dataclass(frozen=True)
class Grain:
    """One rollup table: its cells are (``key`` of start_time, job_type, status)."""

    table: str
    key: str  # the column: day (YYYY-MM-DD) or hour (YYYY-MM-DDTHH), UTC
    length: int  # that many leading characters of a canonical start_time

    def of(self, row: str) -> str:
        return f"substr({row}.start_time, 1, {self.length})"


DAILY = Grain("run_stats_daily", "day", 10)
HOURLY = Grain("run_stats_hourly", "hour", 13)
GRAINS: tuple[Grain, ...] = (DAILY, HOURLY)

_CREATE_TABLE = """
CREATE TABLE {table} (
    {key} TEXT NOT NULL,
    job_type TEXT NOT NULL,
    status TEXT NOT NULL,
    runs INTEGER NOT NULL,
    durations INTEGER NOT NULL,
    duration_hist TEXT NOT NULL,
    duration_max INTEGER,
    items_discovered INTEGER NOT NULL,
    items_succeeded INTEGER NOT NULL,
    items_failed INTEGER NOT NULL,
    first_start TEXT NOT NULL,
    last_start TEXT NOT NULL,
    stale_bounds INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY ({key}, job_type, status)
) WITHOUT ROWID
"""


def _remove(grain: Grain, row: str) -> tuple[str, ...]:
    """Statements taking run ``row`` (OLD) out of its cell, if it is a finished run."""
    has = _HAS_DURATION.format(row=row)
    key = _key(row)
    cell = (
        f"{grain.key} = {grain.of(row)} AND job_type = {row}.job_type"
        f" AND status = {row}.status AND {row}.status != 'running'"
    )
    return (
        f"""UPDATE {grain.table} SET
            runs = runs - 1,
            durations = durations - ({has}),
            duration_hist = CASE WHEN NOT ({has}) THEN duration_hist
                WHEN json_extract(duration_hist, {key}) > 1
                THEN json_set(duration_hist, {key}, json_extract(duration_hist, {key}) - 1)
                ELSE json_remove(duration_hist, {key}) END,
            items_discovered = items_discovered - {row}.items_discovered,
            items_succeeded = items_succeeded - {row}.items_succeeded,
            items_failed = items_failed - {row}.items_failed,
            stale_bounds = stale_bounds OR {row}.start_time <= first_start
                OR {row}.start_time >= last_start
                OR ({has} AND {row}.duration_ms >= duration_max)
            WHERE {cell}""",
        f"DELETE FROM {grain.table} WHERE {cell} AND runs <= 0",
    )


def _add(grain: Grain, row: str) -> str:
    """The statement putting run ``row`` (NEW) into its cell, if it is a finished run."""
    has = _HAS_DURATION.format(row=row)
    key = _key(row)
    return f"""INSERT INTO {grain.table} ({grain.key}, job_type, status, runs, durations,
            duration_hist, duration_max, items_discovered, items_succeeded, items_failed,
            first_start, last_start)
        SELECT {grain.of(row)}, {row}.job_type, {row}.status, 1, ({has}),
            CASE WHEN {has} THEN json_object(CAST({bucket_sql(f"{row}.duration_ms")} AS TEXT), 1)
                ELSE '{{}}' END,
            CASE WHEN {has} THEN {row}.duration_ms END,
            {row}.items_discovered, {row}.items_succeeded, {row}.items_failed,
            {row}.start_time, {row}.start_time
        WHERE {row}.status != 'running'
        ON CONFLICT ({grain.key}, job_type, status) DO UPDATE SET
            runs = runs + 1,
            durations = durations + excluded.durations,
            duration_hist = CASE WHEN NOT ({has}) THEN duration_hist
                ELSE json_set(duration_hist, {key},
                    coalesce(json_extract(duration_hist, {key}), 0) + 1) END,
            duration_max = CASE WHEN duration_max IS NULL
                OR excluded.duration_max > duration_max
                THEN excluded.duration_max ELSE duration_max END,
            items_discovered = items_discovered + excluded.items_discovered,
            items_succeeded = items_succeeded + excluded.items_succeeded,
            items_failed = items_failed + excluded.items_failed,
            first_start = min(first_start, excluded.first_start),
            last_start = max(last_start, excluded.last_start)"""


#: The columns a cell depends on: an update that changes none of them leaves it alone.
_COUNTED = (
    "status",
    "job_type",
    "start_time",
    "duration_ms",
    "items_discovered",
    "items_succeeded",
    "items_failed",
)
_CHANGED = " OR ".join(f"OLD.{column} IS NOT NEW.{column}" for column in _COUNTED)


def _trigger(name: str, event: str, body: tuple[str, ...], when: str = "") -> str:
    condition = f" WHEN {when}" if when else ""
    statements = "".join(f"    {statement};\n" for statement in body)
    return (
        f"CREATE TRIGGER {name} AFTER {event} ON agent_runs FOR EACH ROW{condition}\n"
        f"BEGIN\n{statements}END"
    )


#: The triggers keeping ``run_stats_daily``; re-create them after rebuilding agent_runs.
TRIGGERS: tuple[str, ...] = (
    _trigger(
        "trg_stats_insert",
        "INSERT",
        tuple(_add(grain, "NEW") for grain in GRAINS),
        "NEW.status != 'running'",
    ),
    # Two triggers, each firing only when it has work: the usual update (running to
    # finished) runs no removal. Their order does not matter: a cell gaining and losing
    # a run in either order ends the same (or flagged stale, which is recomputed).
    _trigger(
        "trg_stats_update_old",
        f"UPDATE OF {', '.join(_COUNTED)}",
        tuple(statement for grain in GRAINS for statement in _remove(grain, "OLD")),
        f"OLD.status != 'running' AND ({_CHANGED})",
    ),
    _trigger(
        "trg_stats_update_new",
        f"UPDATE OF {', '.join(_COUNTED)}",
        tuple(_add(grain, "NEW") for grain in GRAINS),
        f"NEW.status != 'running' AND ({_CHANGED})",
    ),
    _trigger(
        "trg_stats_delete",
        "DELETE",
        tuple(statement for grain in GRAINS for statement in _remove(grain, "OLD")),
        "OLD.status != 'running'",
    ),
)


#: Covering for the running runs' part of a query the rollups serve (a running run has
#: no duration in stats), so it reads no table row; only running runs are in it.
_RUNNING_INDEX_SQL = (
    f"CREATE INDEX {RUNNING_INDEX} ON agent_runs(start_time, job_type, status,"
    " items_discovered, items_succeeded, items_failed) WHERE status = 'running'"
)
#: What a migration rebuilding agent_runs must run again after it (DROP TABLE drops them).
AFTER_REBUILD: tuple[str, ...] = (_RUNNING_INDEX_SQL, *TRIGGERS)


def _fill_buckets() -> str:
    values = ", ".join(f"({floor})" for floor in duration_bucket_floors())
    return f"INSERT INTO {BUCKET_TABLE} (lo) VALUES {values}"


def _backfill(grain: Grain) -> str:
    """Every finished run already stored, rolled up in one pass."""
    has = _HAS_DURATION.format(row="r")
    return f"""INSERT INTO {grain.table} ({grain.key}, job_type, status, runs, durations,
            duration_hist, duration_max, items_discovered, items_succeeded, items_failed,
            first_start, last_start)
        SELECT cell, job_type, status, sum(runs), sum(durations),
            coalesce(json_group_object(CAST(bucket AS TEXT), durations) FILTER (WHERE bucket IS NOT NULL),
                '{{}}'),
            max(duration_max), sum(discovered), sum(succeeded), sum(failed),
            min(first_start), max(last_start)
        FROM (
            SELECT {grain.of("r")} AS cell, r.job_type, r.status,
                CASE WHEN {has} THEN {bucket_sql("r.duration_ms")} END AS bucket,
                count(*) AS runs, sum({has}) AS durations,
                max(CASE WHEN {has} THEN r.duration_ms END) AS duration_max,
                total(r.items_discovered) AS discovered, total(r.items_succeeded) AS succeeded,
                total(r.items_failed) AS failed,
                min(r.start_time) AS first_start, max(r.start_time) AS last_start
            FROM agent_runs AS r WHERE r.status != 'running'
            GROUP BY 1, 2, 3, 4
        )
        GROUP BY cell, job_type, status"""


#: Migration statements: tables, the running runs' partial index, backfill, triggers.
ROLLUP_STATEMENTS: tuple[str, ...] = (
    f"CREATE TABLE {BUCKET_TABLE} (lo INTEGER PRIMARY KEY)",
    _fill_buckets(),
    *(_CREATE_TABLE.format(table=grain.table, key=grain.key) for grain in GRAINS),
    _RUNNING_INDEX_SQL,
    *(_backfill(grain) for grain in GRAINS),
    *TRIGGERS,
)
