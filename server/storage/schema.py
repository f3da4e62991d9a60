"""The database schema as numbered migrations, applied in place at start-up.

``PRAGMA user_version`` records the version; each migration runs in its own
transaction, so an interrupted upgrade resumes where it stopped. Every filter
the guide documents, and the ``created_at DESC`` ordering, has an index here:
the equality filters with status, then the list order (``LIST_INDEXES``),
which list queries name with ``INDEXED BY`` (``tests/server/test_query_plans.py`` checks
the plans).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

# The columns of agent_runs that are answered are the fields of the run record as
# answered, which the API contract owns.
from server.contract.run_record import RUN_COUNTER_COLUMNS, RUN_JSON_COLUMNS
from server.storage.rollups import ROLLUP_STATEMENTS


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_V1_TABLE = """
CREATE TABLE agent_runs (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    job_type TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'running'
        CHECK (status IN ('running','success','failure','partial','timeout','cancelled')),
    start_time TEXT NOT NULL,
    end_time TEXT,
    agent_owner TEXT, product TEXT, product_family TEXT, platform TEXT, subdomain TEXT,
    website TEXT, website_section TEXT, item_name TEXT,
    input_summary TEXT, output_summary TEXT, source_ref TEXT, target_ref TEXT,
    error_summary TEXT, error_details TEXT,
    git_repo TEXT, git_branch TEXT, git_commit_hash TEXT, git_run_tag TEXT,
    git_commit_source TEXT, git_commit_author TEXT, git_commit_timestamp TEXT,
    host TEXT, environment TEXT, trigger_type TEXT, insight_id TEXT, parent_run_id TEXT,
    items_discovered INTEGER NOT NULL DEFAULT 0 CHECK (items_discovered >= 0),
    items_succeeded INTEGER NOT NULL DEFAULT 0 CHECK (items_succeeded >= 0),
    items_failed INTEGER NOT NULL DEFAULT 0 CHECK (items_failed >= 0),
    items_skipped INTEGER NOT NULL DEFAULT 0 CHECK (items_skipped >= 0),
    duration_ms INTEGER NOT NULL DEFAULT 0 CHECK (duration_ms >= 0),
    metrics_json TEXT,
    context_json TEXT,
    created_at TEXT NOT NULL
)
"""


def _json_value(column: str) -> str:
    if column in RUN_JSON_COLUMNS:  # unparseable stored text is null, as row_to_run has it
        return f"CASE WHEN json_valid({column}) THEN json({column}) END"
    return column


def _json_exact(column: str) -> str:
    # CASE, not OR: SQLite may evaluate json() of malformed text (an error) under an OR.
    return f"CASE WHEN json_valid({column}) THEN json({column}) = {column} ELSE 1 END"


def rendered_run_sql(columns: tuple[str, ...]) -> str:
    """A row as the JSON object the API answers (URLs excepted), or NULL when SQLite
    cannot render it as the Python way does (``run_json`` falls back to Python): a
    BLOB in any column, a counter that is not an integer (their sum is one iff they all are: a real or an
    overflow makes it a real, a NULL a NULL), or a JSON column whose text is not the
    minified text ``json()`` gives back (only data written by something else)."""
    counters = " + ".join(column for column in columns if column in RUN_COUNTER_COLUMNS)
    # 'blob' sorts first among typeof()'s answers: one min() says whether any value is
    # a BLOB, which json_object() refuses (an error would fail the writer's statement).
    types = ", ".join(f"typeof({column})" for column in columns)
    exact = " AND ".join(
        (
            f"min({types}) != 'blob'",
            f"typeof({counters}) = 'integer'",
            *(_json_exact(column) for column in columns if column in RUN_JSON_COLUMNS),
        )
    )
    values = ", ".join(f"'{column}', {_json_value(column)}" for column in columns)
    return f"CASE WHEN {exact} THEN CAST(json_object({values}) AS BLOB) END"


# Migration 5, measured (bench/list_cpu.py --callgrind, fleet rows, 100k): a list page
# costs 2.5-3.1 M instructions instead of 7.2-8.0 M (json_object() over 42 columns at
# every read was 39% of it; a flag vouching for the JSON columns would only save ~12%).
# The price: ~1.4-1.5 KB more file per run (1.03 -> 2.57 KB at 100k, 1.09 -> 2.49 GB at
# 1M), ~5-10% more SQLite CPU per insert or update, and a one-time rebuild at upgrade
# (100k runs: 3.5 s CPU; 1M: 51 s CPU, 71 s on a loaded machine), during which the WAL
# holds the whole new table (free disk: about twice the new file).

#: The runs' columns as migration 5 rendered them, frozen: a later column needs a
#: migration that rebuilds ``run_json`` (``tests/server/test_run_json_stored.py`` checks).
_V5_COLUMNS: tuple[str, ...] = (
    "event_id",
    "run_id",
    "agent_name",
    "job_type",
    "status",
    "start_time",
    "end_time",
    "agent_owner",
    "product",
    "product_family",
    "platform",
    "subdomain",
    "website",
    "website_section",
    "item_name",
    "input_summary",
    "output_summary",
    "source_ref",
    "target_ref",
    "error_summary",
    "error_details",
    "git_repo",
    "git_branch",
    "git_commit_hash",
    "git_run_tag",
    "git_commit_source",
    "git_commit_author",
    "git_commit_timestamp",
    "host",
    "environment",
    "trigger_type",
    "insight_id",
    "parent_run_id",
    "items_discovered",
    "items_succeeded",
    "items_failed",
    "items_skipped",
    "duration_ms",
    "metrics_json",
    "context_json",
    "created_at",
    "updated_at",
)
_V5_TABLE = (
    _V1_TABLE.replace("CREATE TABLE agent_runs (", "CREATE TABLE agent_runs_v5 (")
    .rstrip()
    .removesuffix(")")
    .rstrip()
    + ",\n    updated_at TEXT,"
    + f"\n    run_json BLOB GENERATED ALWAYS AS ({rendered_run_sql(_V5_COLUMNS)}) STORED\n)"
)
_V5_COPIED = ", ".join(("id", *_V5_COLUMNS))
#: Migration 4's indexes, made again on the rebuilt table.
_V5_INDEXES: tuple[str, ...] = (
    "CREATE INDEX idx_runs_created ON agent_runs(created_at, id)",
    "CREATE INDEX idx_runs_status_created ON agent_runs(status, created_at, id)",
    "CREATE INDEX idx_runs_agent_status_created ON agent_runs(agent_name, status, created_at, id)",
    "CREATE INDEX idx_runs_job_status_created ON agent_runs(job_type, status, created_at, id)",
    "CREATE INDEX idx_runs_agent_job_status_created"
    " ON agent_runs(agent_name, job_type, status, created_at, id)",
    "CREATE INDEX idx_runs_start_created ON agent_runs(start_time, created_at)",
)

# Migration 6: staleness (``server.storage.stale``). ``last_seen_at`` and
# ``heartbeat_timeout_s`` are answered on runs, so run_json is rebuilt over them (a table
# rebuild again); ``sidecar_id`` and ``reaped_at`` are bookkeeping, not answered.
_V6_COLUMNS: tuple[str, ...] = (
    *_V5_COLUMNS[: _V5_COLUMNS.index("created_at")],
    "heartbeat_timeout_s",
    "created_at",
    "updated_at",
    "last_seen_at",
)
_V6_TABLE = (
    _V1_TABLE.replace("CREATE TABLE agent_runs (", "CREATE TABLE agent_runs_v6 (")
    .rstrip()
    .removesuffix(")")
    .rstrip()
    + ",\n    updated_at TEXT,"
    + "\n    heartbeat_timeout_s INTEGER,"
    + "\n    last_seen_at TEXT,"
    + "\n    sidecar_id TEXT,"
    + "\n    reaped_at TEXT,"
    + f"\n    run_json BLOB GENERATED ALWAYS AS ({rendered_run_sql(_V6_COLUMNS)}) STORED\n)"
)
#: A running run's deadline in seconds (Julian day seconds), when it names its own
#: allowance: the expression ``idx_runs_running_deadline`` is built on (queries must
#: spell it the same way for SQLite to use the index).
OWN_DEADLINE_SQL = "(julianday(last_seen_at) * 86400.0 + heartbeat_timeout_s)"
#: Migration 6's indexes: the reaper's (all partial, over running runs only, so they
#: cost nothing for finished runs) and the count of reaped runs (/metrics, at start).
STALE_INDEXES: tuple[str, ...] = (
    # Runs without their own allowance: the job type's, else the default.
    "CREATE INDEX idx_runs_running_job_seen ON agent_runs(job_type, last_seen_at)"
    " WHERE status = 'running' AND heartbeat_timeout_s IS NULL",
    # Dropped by migration 9: the one above serves the default too (``stale``).
    "CREATE INDEX idx_runs_running_seen ON agent_runs(last_seen_at)"
    " WHERE status = 'running' AND heartbeat_timeout_s IS NULL",
    # Runs with their own: ordered by their deadline.
    f"CREATE INDEX idx_runs_running_deadline ON agent_runs({OWN_DEADLINE_SQL})"
    " WHERE status = 'running' AND heartbeat_timeout_s IS NOT NULL",
    "CREATE INDEX idx_runs_reaped ON agent_runs(reaped_at) WHERE reaped_at IS NOT NULL",
)
_V6_COPIED = ", ".join(("id", *_V5_COLUMNS))
_SIDECARS_TABLE = """
CREATE TABLE sidecars (
    sidecar_id TEXT PRIMARY KEY,
    last_contact_at TEXT NOT NULL,
    queued_since TEXT
) WITHOUT ROWID
"""


#: Migration 8: a run is *prompt* when both its instants are in the canonical form this
#: server writes (so text order is time order) and created_at lies within PROMPT_LAG_S of
#: start_time; the rest (recorded late, back-filled, foreign text) are *late*. Always 0 or
#: 1, never NULL: every run is exactly one of the two. Frozen: the server's INSERT and
#: migration 11's trigger evaluate it to set the ``late`` column (a change needs a
#: migration that recomputes every stored flag).
PROMPT_LAG_S = 600


def _canonical(column: str) -> str:
    # strftime() is NULL for no date and, given a modifier, normalises an impossible one
    # (Feb 30 is Mar 2): only canonical text survives the round trip (and fractions
    # that round up to the next second, 0.05% of runs, count as late: harmless).
    return (
        f"strftime('%Y-%m-%dT%H:%M:%S', {column}, '+0 seconds') = substr({column}, 1, 19)"
        f" AND substr({column}, 20) GLOB '.[0-9][0-9][0-9][0-9][0-9][0-9]+00:00'"
    )


def prompt_sql(start_time: str, created_at: str) -> str:
    """The prompt predicate over two instants (columns, or a trigger's ``NEW.`` ones)."""
    return (
        f"coalesce({_canonical(start_time)} AND {_canonical(created_at)}"
        # In whole milliseconds: julianday() is a double of days, inexact at a boundary.
        f" AND abs(round((julianday({created_at}) - julianday({start_time})) * 86400000))"
        f" <= {PROMPT_LAG_S * 1000:d}, 0)"
    )


PROMPT_RUN_SQL = prompt_sql("start_time", "created_at")


# Migration 11: whether a run is late, kept in a column (``late``, 0 or 1): the
# server's INSERT computes it from the values it inserts (``late_value_sql``), and a
# trigger recomputes it when an UPDATE sets start_time, created_at or the flag itself.
# The late runs' partial indexes are ``WHERE late = 1``: evaluating that is reading a
# column. Partial indexes on the predicate itself (as migration 8's was) cost one
# evaluation per index per insert, and two per index for each PATCH of a column in it
# (``bench/write_cost.py``: five such indexes took a PATCH from 547k to 843k SQLite
# instructions); a trigger on every INSERT cost more than the evaluation it makes. A
# writer other than the server must set ``late`` itself (as
# ``late_value_sql`` does), or its late runs are missing from start_time windows. A
# later migration that rebuilds agent_runs re-creates the trigger, as it does the
# rollups'.
def late_value_sql(start_time: str, created_at: str) -> str:
    """The ``late`` value of a row with those instants (columns, parameters, NEW.)."""
    return f"(NOT {prompt_sql(start_time, created_at)})"


_LATE_FLAG = late_value_sql("NEW.start_time", "NEW.created_at")
LATE_TRIGGER = (
    "CREATE TRIGGER trg_runs_late_update AFTER UPDATE OF start_time, created_at, late"
    f" ON agent_runs FOR EACH ROW WHEN NEW.late IS NOT {_LATE_FLAG}"
    f" BEGIN UPDATE agent_runs SET late = {_LATE_FLAG} WHERE id = NEW.id; END"
)
#: The late runs' index for each key of ``LIST_INDEXES``: the same equality columns, then
#: (start_time, created_at), partial on ``late = 1``. Status is in four of them: a PATCH that
#: finishes a late run moves its entries (a prompt run is in none of them).
LATE_INDEXES: dict[tuple[str, ...], str] = {
    (): "idx_runs_late_start",
    ("status",): "idx_runs_late_status_start",
    ("agent_name", "status"): "idx_runs_late_agent_status_start",
    ("job_type", "status"): "idx_runs_late_job_status_start",
    ("agent_name", "job_type", "status"): "idx_runs_late_agent_job_status_start",
}
#: Migration 12: the late runs again, newest first, for a window bounded above only
#: (``start_time_to``): the same equality columns, then ``(created_at, id, start_time)``,
#: partial on ``late = 1``. Its far arm wants the late runs started by the bound and
#: created after it (plus the margin), newest first: a range of this index from the
#: newest down, the start_time checked in the index, that stops at the page, where the
#: (start_time, created_at) indexes read every late run started before the bound (the
#: whole history) and sort those created after it. ``id`` after created_at gives the
#: list's order, so the arm merges with the others without a sort.
LATE_CREATED_INDEXES: dict[tuple[str, ...], str] = {
    (): "idx_runs_late_created",
    ("status",): "idx_runs_late_status_created",
    ("agent_name", "status"): "idx_runs_late_agent_status_created",
    ("job_type", "status"): "idx_runs_late_job_status_created",
    ("agent_name", "job_type", "status"): "idx_runs_late_agent_job_status_created",
}


def _partial_indexes(
    indexes: dict[tuple[str, ...], str], trailing: tuple[str, ...], where: str
) -> tuple[str, ...]:
    """One partial index per key of ``indexes``: its equality columns, then ``trailing``."""
    return tuple(
        f"CREATE INDEX {name} ON agent_runs({', '.join((*columns, *trailing))}) WHERE {where}"
        for columns, name in indexes.items()
    )


_MIGRATION_11 = (
    "ALTER TABLE agent_runs ADD COLUMN late INTEGER NOT NULL DEFAULT 0",
    # The late runs are those migration 8's index holds (its WHERE, word for word, lets
    # SQLite read them from it; a file without it is scanned): only their rows are written.
    f"UPDATE agent_runs SET late = 1 WHERE NOT {PROMPT_RUN_SQL}",
    "DROP INDEX IF EXISTS idx_runs_start_late",
    LATE_TRIGGER,
    # late too, though always 1: this SQLite reads a row for a column of the partial
    # WHERE that the index does not hold, even one the WHERE fixes.
    *_partial_indexes(LATE_INDEXES, ("start_time", "created_at", "late"), "late = 1"),
)

#: Migration 13: the late runs that can belong to a window bounded below only
#: (``start_time_from``) yet were created before its created_at range: created before
#: they started, as text (a client's clock ahead of the server's, or foreign text). A run
#: started at or after ``from`` and created before ``from`` minus the lag was created,
#: as text, before it started (SQLite's text order is a total order), so those are all
#: in these indexes: the same columns as ``LATE_INDEXES``, partial on ``late = 1 AND
#: created_at < start_time``. A fleet's late runs are recorded after they start and are
#: in none of them: that far arm reads a few entries, not every late run started since
#: ``from`` (at 1M runs, 40% late, a window 85 days back: 0.12 ms of SQLite per page
#: against 23.7 ms).
EARLY_INDEXES: dict[tuple[str, ...], str] = {
    (): "idx_runs_early_start",
    ("status",): "idx_runs_early_status_start",
    ("agent_name", "status"): "idx_runs_early_agent_status_start",
    ("job_type", "status"): "idx_runs_early_job_status_start",
    ("agent_name", "job_type", "status"): "idx_runs_early_agent_job_status_start",
}
#: The early indexes' WHERE beside ``late = 1``, word for word in the far arm's WHERE
#: (SQLite uses a partial index only for a query that has its WHERE among its terms).
EARLY_TERM = "created_at < start_time"

_MIGRATION_12 = _partial_indexes(
    LATE_CREATED_INDEXES, ("created_at", "id", "start_time", "late"), "late = 1"
)

_MIGRATION_13 = _partial_indexes(
    EARLY_INDEXES, ("start_time", "created_at", "late"), f"late = 1 AND {EARLY_TERM}"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "agent_runs table with the created_at ordering index",
        (
            _V1_TABLE,
            "CREATE INDEX idx_runs_created ON agent_runs(created_at, id)",
        ),
    ),
    Migration(
        2,
        "updated_at column and one index per documented filter",
        (
            "ALTER TABLE agent_runs ADD COLUMN updated_at TEXT",
            "UPDATE agent_runs SET updated_at = created_at WHERE updated_at IS NULL",
            "CREATE INDEX idx_runs_agent_created ON agent_runs(agent_name, created_at, id)",
            "CREATE INDEX idx_runs_job_created ON agent_runs(job_type, created_at, id)",
            "CREATE INDEX idx_runs_status_created ON agent_runs(status, created_at, id)",
            "CREATE INDEX idx_runs_start_time ON agent_runs(start_time)",
        ),
    ),
    Migration(
        3,
        "server_meta with the random key that signs list cursors (kept across restarts)",
        (
            "CREATE TABLE server_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
            "INSERT INTO server_meta (key, value) VALUES ('cursor_key', randomblob(32))",
        ),
    ),
    Migration(
        4,
        "list indexes: the equality filters plus status, then the list order",
        (
            "CREATE INDEX idx_runs_agent_status_created"
            " ON agent_runs(agent_name, status, created_at, id)",
            "CREATE INDEX idx_runs_job_status_created ON agent_runs(job_type, status, created_at, id)",
            "CREATE INDEX idx_runs_agent_job_status_created"
            " ON agent_runs(agent_name, job_type, status, created_at, id)",
            # Served by the indexes above, one range per status (see LIST_INDEXES).
            "DROP INDEX idx_runs_agent_created",
            "DROP INDEX idx_runs_job_created",
            # created_at too: a window's created_at span is read from the index alone.
            "DROP INDEX idx_runs_start_time",
            "CREATE INDEX idx_runs_start_created ON agent_runs(start_time, created_at)",
        ),
    ),
    Migration(
        5,
        "run_json: each run's JSON object rendered when written (a STORED generated column,"
        " so every writer keeps it current); a table rebuild, as SQLite adds no STORED column",
        (
            _V5_TABLE,
            f"INSERT INTO agent_runs_v5 ({_V5_COPIED}) SELECT {_V5_COPIED} FROM agent_runs",
            "DROP TABLE agent_runs",
            "ALTER TABLE agent_runs_v5 RENAME TO agent_runs",
            *_V5_INDEXES,
        ),
    ),
    Migration(
        6,
        "stale runs: last_seen_at, heartbeat_timeout_s (both answered: run_json rebuilt),"
        " sidecar_id, reaped_at, the sidecars table and the reaper's partial indexes",
        (
            _V6_TABLE,
            f"INSERT INTO agent_runs_v6 ({_V6_COPIED}, last_seen_at)"
            f" SELECT {_V6_COPIED}, COALESCE(updated_at, created_at) FROM agent_runs",
            "DROP TABLE agent_runs",
            "ALTER TABLE agent_runs_v6 RENAME TO agent_runs",
            *_V5_INDEXES,
            *STALE_INDEXES,
            _SIDECARS_TABLE,
        ),
    ),
    Migration(
        7,
        "stats: daily rollups of finished runs kept by triggers (backfilled), and a partial"
        " index of running runs by start_time (see server/storage/rollups.py)",
        ROLLUP_STATEMENTS,
    ),
    Migration(
        8,
        "start_time windows: runs recorded late get a small partial index; the others are"
        " read through the list indexes within the window's created_at margin",
        (
            # No status (nor other column a PATCH sets): an update leaves the index alone.
            f"CREATE INDEX idx_runs_start_late ON agent_runs(start_time, created_at)"
            f" WHERE NOT {PROMPT_RUN_SQL}",
        ),
    ),
    Migration(
        9,
        "one reaper index fewer: the default allowance's overdue runs are read through"
        " idx_runs_running_job_seen, one range per job type (see server/storage/stale.py);"
        " every write to a running run updated both",
        ("DROP INDEX idx_runs_running_seen",),
    ),
    Migration(
        10,
        "upsert staleness: the source and sequence of the last sidecar snapshot applied to"
        " each run (NULL for existing runs and direct writes; see runs.upsert)",
        (
            "ALTER TABLE agent_runs ADD COLUMN snapshot_source TEXT",
            "ALTER TABLE agent_runs ADD COLUMN snapshot_seq INTEGER",
        ),
    ),
    Migration(
        11,
        "start_time windows: a late flag set by the INSERT (a trigger for UPDATEs), and the"
        " late runs indexed by the list's equality filters too, so a filtered window reads"
        " only its matching late runs (see server/storage/window.py)",
        _MIGRATION_11,
    ),
    Migration(
        12,
        "start_time windows bounded above only: the late runs indexed newest first by the"
        " list's equality filters, so their arm stops at the page instead of reading every"
        " late run started before the bound (see server/storage/window.py)",
        _MIGRATION_12,
    ),
    Migration(
        13,
        "start_time windows bounded below only: the late runs created before they started"
        " indexed apart, so that window's far arm reads those few instead of every late run"
        " started since its bound (see server/storage/window.py)",
        _MIGRATION_13,
    ),
)

#: The equality filters of a list query, in index column order.
EQUALITY_FILTERS: tuple[str, ...] = ("agent_name", "job_type", "status")
#: The index that serves each set of equality filters, named by its leading columns;
#: ``created_at, id`` (the list order) follow them. A query without ``status`` uses the
#: index of its filters plus status, one range per status merged newest first (the
#: status CHECK constraint makes those ranges all the runs); see ``runs.query_sql``.
#: Five indexes, not one per combination (eight): ``bench/index_cost.py`` measured the
#: eight at half the insert rate of these five (which insert as fast as the four
#: single-filter indexes before them) and 18% more file.
LIST_INDEXES: dict[tuple[str, ...], str] = {
    (): "idx_runs_created",
    ("status",): "idx_runs_status_created",
    ("agent_name", "status"): "idx_runs_agent_status_created",
    ("job_type", "status"): "idx_runs_job_status_created",
    ("agent_name", "job_type", "status"): "idx_runs_agent_job_status_created",
}
#: Serves the late runs of ``start_time`` windows without equality filters (see
#: ``window``); prompt runs are read through ``LIST_INDEXES``.
LATE_START_INDEX = LATE_INDEXES[()]
#: Every run by start_time: the stats' reads of raw runs (``stats``) walk it; list windows
#: no longer do (migration 8 keeps it for the stats).
START_TIME_INDEX = "idx_runs_start_created"


SCHEMA_VERSION = MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    """The database was written by a newer server; refusing to touch it."""


def current_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def cursor_key(conn: sqlite3.Connection) -> bytes:
    """The secret that signs list cursors (made by migration 3)."""
    row = conn.execute("SELECT value FROM server_meta WHERE key = 'cursor_key'").fetchone()
    return bytes(row[0])


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring the database up to SCHEMA_VERSION; return the versions applied."""
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {found} is newer than this server's {SCHEMA_VERSION}"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
