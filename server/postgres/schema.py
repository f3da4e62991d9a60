"""The PostgreSQL schema as numbered migrations, as ``server.storage.schema`` is SQLite's.

``schema_migrations`` records each version applied. Each migration runs in its own
transaction; the whole run holds a session advisory lock, so replicas starting at once
migrate one after the other (the second finds the work done). Columns have the meaning
and the stored form of SQLite's ``agent_runs`` (instants as canonical text, JSON columns
as the server's own JSON text), so answers come out byte for byte the same; text is
``COLLATE "C"`` (byte order, as SQLite's BINARY) whatever the database's locale.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

#: The advisory lock (two-int key space: never one of the per-run bigint locks) that
#: serialises migrations across replicas: "te13" and 1.
MIGRATION_LOCK: tuple[int, int] = (0x74653133, 1)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_STATUSES = "'running','success','failure','partial','timeout','cancelled'"

# Frozen: a later column is a new migration (the contract's columns are checked against
# this table by tests/postgres/test_pg_schema.py).
_V1_RUNS = f"""
CREATE TABLE agent_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id text COLLATE "C" NOT NULL UNIQUE,
    run_id text COLLATE "C" NOT NULL,
    agent_name text COLLATE "C" NOT NULL,
    job_type text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL DEFAULT 'running' CHECK (status IN ({_STATUSES})),
    start_time text COLLATE "C" NOT NULL,
    end_time text COLLATE "C",
    agent_owner text COLLATE "C", product text COLLATE "C", product_family text COLLATE "C",
    platform text COLLATE "C", subdomain text COLLATE "C", website text COLLATE "C",
    website_section text COLLATE "C", item_name text COLLATE "C",
    input_summary text COLLATE "C", output_summary text COLLATE "C",
    source_ref text COLLATE "C", target_ref text COLLATE "C",
    error_summary text COLLATE "C", error_details text COLLATE "C",
    git_repo text COLLATE "C", git_branch text COLLATE "C", git_commit_hash text COLLATE "C",
    git_run_tag text COLLATE "C", git_commit_source text COLLATE "C",
    git_commit_author text COLLATE "C", git_commit_timestamp text COLLATE "C",
    host text COLLATE "C", environment text COLLATE "C", trigger_type text COLLATE "C",
    insight_id text COLLATE "C", parent_run_id text COLLATE "C",
    items_discovered bigint NOT NULL DEFAULT 0 CHECK (items_discovered >= 0),
    items_succeeded bigint NOT NULL DEFAULT 0 CHECK (items_succeeded >= 0),
    items_failed bigint NOT NULL DEFAULT 0 CHECK (items_failed >= 0),
    items_skipped bigint NOT NULL DEFAULT 0 CHECK (items_skipped >= 0),
    duration_ms bigint NOT NULL DEFAULT 0 CHECK (duration_ms >= 0),
    metrics_json text COLLATE "C",
    context_json text COLLATE "C",
    heartbeat_timeout_s bigint,
    created_at text COLLATE "C" NOT NULL,
    updated_at text COLLATE "C",
    last_seen_at text COLLATE "C",
    sidecar_id text COLLATE "C",
    reaped_at text COLLATE "C"
)
"""

# Client keys are bytea (any address, NUL included, never collated); instants are epoch
# seconds of the database's clock, the one clock all replicas share.
_V4_RATE_LIMIT: tuple[str, ...] = (
    "CREATE UNLOGGED TABLE rate_limit_pools (client bytea PRIMARY KEY,"
    " tokens double precision NOT NULL, stamp double precision NOT NULL,"
    " full_at double precision NOT NULL)",
    "CREATE INDEX idx_rate_limit_pools_full ON rate_limit_pools (full_at)",
    "CREATE UNLOGGED TABLE rate_limit_leases (client bytea NOT NULL,"
    ' replica text COLLATE "C" NOT NULL, held double precision NOT NULL,'
    " seen double precision NOT NULL, PRIMARY KEY (client, replica))",
    "CREATE INDEX idx_rate_limit_leases_seen ON rate_limit_leases (seen)",
    'CREATE UNLOGGED TABLE rate_limit_replicas (replica text COLLATE "C" PRIMARY KEY,'
    " seen double precision NOT NULL)",
    # One call per replica per tick: for each client (in key order, so two replicas
    # lock pools in one order and never deadlock) return what the replica reports,
    # refill the pool, and lease the replica its share; ``others``: what the other
    # replicas hold of it. The first row (client NULL) counts the replicas alive.
    """CREATE FUNCTION telemetry_rate_exchange(
    p_replica text, p_rpm double precision, p_window double precision,
    p_clients bytea[], p_returned double precision[], p_release boolean[])
RETURNS TABLE (client bytea, share double precision, pool double precision, active integer,
    others double precision)
LANGUAGE plpgsql AS $$
DECLARE
    now_s double precision := extract(epoch FROM clock_timestamp())::double precision;
    rate double precision := p_rpm / 60.0;
    i bigint;
    c bytea;
    t double precision;
    at double precision;
    held_all double precision;
    n integer;
    s double precision;
BEGIN
    INSERT INTO rate_limit_replicas AS r (replica, seen) VALUES (p_replica, now_s)
        ON CONFLICT (replica) DO UPDATE SET seen = now_s;
    RETURN QUERY SELECT NULL::bytea, 0::double precision, 0::double precision,
        (SELECT count(*)::integer FROM rate_limit_replicas r WHERE r.seen >= now_s - p_window),
        0::double precision;
    FOR i IN SELECT u.ord FROM unnest(p_clients) WITH ORDINALITY AS u(k, ord) ORDER BY u.k LOOP
        c := p_clients[i];
        LOOP  -- again if a sweep deleted the row while we waited for it
            INSERT INTO rate_limit_pools AS p (client, tokens, stamp, full_at)
                VALUES (c, p_rpm, now_s, now_s) ON CONFLICT DO NOTHING;
            SELECT p.tokens, p.stamp INTO t, at FROM rate_limit_pools p
                WHERE p.client = c FOR UPDATE;
            EXIT WHEN FOUND;
        END LOOP;
        -- A replica silent for p_window is gone: its lease stops counting, its tokens
        -- are lost (it may have spent them) and come back by refill.
        DELETE FROM rate_limit_leases l WHERE l.client = c AND l.seen < now_s - p_window;
        SELECT coalesce(sum(l.held), 0) INTO held_all FROM rate_limit_leases l
            WHERE l.client = c;
        t := least(t + greatest(0, now_s - at) * rate, greatest(t, p_rpm - held_all));
        t := t + p_returned[i];
        IF p_release[i] THEN
            DELETE FROM rate_limit_leases l WHERE l.client = c AND l.replica = p_replica;
            s := 0;
            SELECT count(*)::integer INTO n FROM rate_limit_leases l WHERE l.client = c;
        ELSE
            INSERT INTO rate_limit_leases AS l (client, replica, held, seen)
                VALUES (c, p_replica, 0, now_s)
                ON CONFLICT ON CONSTRAINT rate_limit_leases_pkey DO UPDATE SET seen = now_s;
            SELECT count(*)::integer INTO n FROM rate_limit_leases l WHERE l.client = c;
            s := CASE WHEN t >= 1 THEN least(t, greatest(t / n, 1)) ELSE 0 END;
            t := t - s;
            UPDATE rate_limit_leases l SET held = s WHERE l.client = c AND l.replica = p_replica;
        END IF;
        UPDATE rate_limit_pools p SET tokens = t, stamp = now_s,
            full_at = now_s + greatest(0, p_rpm - t) / rate WHERE p.client = c;
        RETURN QUERY SELECT c, s, t, n, (SELECT coalesce(sum(l.held), 0) FROM rate_limit_leases l
            WHERE l.client = c AND l.replica <> p_replica);
    END LOOP;
END
$$""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "agent_runs (the SQLite table's columns and stored forms), the list indexes, the"
        " cursor key, sidecar presence",
        (
            _V1_RUNS,
            # The list order, and one index per combination of the equality filters
            # followed by it: PostgreSQL has no merge of one range per status (SQLite's
            # UNION ALL arms), so agent and job alone have their own.
            "CREATE INDEX idx_runs_created ON agent_runs (created_at, id)",
            "CREATE INDEX idx_runs_status_created ON agent_runs (status, created_at, id)",
            "CREATE INDEX idx_runs_agent_created ON agent_runs (agent_name, created_at, id)",
            "CREATE INDEX idx_runs_job_created ON agent_runs (job_type, created_at, id)",
            "CREATE INDEX idx_runs_agent_status_created"
            " ON agent_runs (agent_name, status, created_at, id)",
            "CREATE INDEX idx_runs_job_status_created"
            " ON agent_runs (job_type, status, created_at, id)",
            "CREATE INDEX idx_runs_agent_job_created"
            " ON agent_runs (agent_name, job_type, created_at, id)",
            "CREATE INDEX idx_runs_agent_job_status_created"
            " ON agent_runs (agent_name, job_type, status, created_at, id)",
            "CREATE INDEX idx_runs_start_created ON agent_runs (start_time, created_at)",
            'CREATE TABLE server_meta (key text COLLATE "C" PRIMARY KEY, value bytea NOT NULL)',
            # 32 random bytes (gen_random_uuid is core from PostgreSQL 13; 244 random bits).
            "INSERT INTO server_meta (key, value) VALUES ('cursor_key',"
            " uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()))",
            'CREATE TABLE sidecars (sidecar_id text COLLATE "C" PRIMARY KEY,'
            ' last_contact_at text COLLATE "C" NOT NULL, queued_since text COLLATE "C")',
        ),
    ),
    Migration(
        2,
        "the distinct agent names and job types ever stored, kept by a trigger that notifies"
        " the replicas (LISTEN telemetry_metadata) when a new one appears; the reaper's index",
        (
            'CREATE TABLE run_agent_names (name text COLLATE "C" PRIMARY KEY)',
            'CREATE TABLE run_job_types (name text COLLATE "C" PRIMARY KEY)',
            "INSERT INTO run_agent_names SELECT DISTINCT agent_name FROM agent_runs",
            "INSERT INTO run_job_types SELECT DISTINCT job_type FROM agent_runs",
            # One index probe per written row while the names are known (the usual
            # case); a NOTIFY, which serialises commits, only when one is new.
            """CREATE FUNCTION telemetry_note_names() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM run_agent_names WHERE name = NEW.agent_name) THEN
        INSERT INTO run_agent_names (name) VALUES (NEW.agent_name) ON CONFLICT DO NOTHING;
        PERFORM pg_notify('telemetry_metadata', '');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM run_job_types WHERE name = NEW.job_type) THEN
        INSERT INTO run_job_types (name) VALUES (NEW.job_type) ON CONFLICT DO NOTHING;
        PERFORM pg_notify('telemetry_metadata', '');
    END IF;
    RETURN NULL;
END
$$""",
            "CREATE TRIGGER agent_runs_note_names AFTER INSERT OR UPDATE OF agent_name, job_type"
            " ON agent_runs FOR EACH ROW EXECUTE FUNCTION telemetry_note_names()",
            # Reaped runs (the /metrics count), as SQLite's idx_runs_reaped.
            "CREATE INDEX idx_runs_reaped ON agent_runs (reaped_at) WHERE reaped_at IS NOT NULL",
            # The reaper's candidates: running runs by last_seen_at.
            "CREATE INDEX idx_runs_running_seen ON agent_runs (last_seen_at)"
            " WHERE status = 'running'",
        ),
    ),
    Migration(
        3,
        "upsert staleness: the source and sequence of the last sidecar snapshot applied to"
        " each run (NULL for existing runs and direct writes; see runs.upsert)",
        (
            'ALTER TABLE agent_runs ADD COLUMN snapshot_source text COLLATE "C"',
            "ALTER TABLE agent_runs ADD COLUMN snapshot_seq bigint",
        ),
    ),
    Migration(
        4,
        "the rate limit shared by replicas (UNLOGGED soft state: a crash empties it, which"
        " only refills every client's budget): one token pool per client, the leases"
        " replicas hold of it, the replicas alive; see server.postgres.ratelimit",
        _V4_RATE_LIMIT,
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version

_LEDGER = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version integer PRIMARY KEY,"
    " description text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer server; refusing to touch it."""


class MigrationLockTimeout(RuntimeError):
    """Another replica held the migration lock for longer than we may wait."""


async def current_version(conn: Any) -> int:
    """The newest version applied, 0 for a database never migrated."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def migrate(
    conn: Any,
    migrations: tuple[Migration, ...] = MIGRATIONS,
    *,
    lock_wait_s: float = 600.0,
) -> list[int]:
    """Bring the database up to the last of ``migrations``; the versions applied here
    (none when another replica did the work first). ``conn``: an asyncpg connection of
    its own (the advisory lock is held by its session)."""
    await _lock(conn, lock_wait_s)
    try:
        await conn.execute(_LEDGER)
        found = await current_version(conn)
        latest = migrations[-1].version
        if found > latest:
            raise SchemaTooNew(
                f"database schema version {found} is newer than this server's {latest}"
            )
        applied = []
        for migration in migrations:
            if migration.version <= found:
                continue
            async with conn.transaction():
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                    migration.version,
                    migration.description,
                )
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *MIGRATION_LOCK)


async def _lock(conn: Any, wait_s: float) -> None:
    """Take the migration lock, polling (a bounded wait, unlike pg_advisory_lock)."""
    deadline = time.monotonic() + wait_s
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *MIGRATION_LOCK):
        if time.monotonic() >= deadline:
            raise MigrationLockTimeout(
                f"another server held the migration lock for over {wait_s:g} s"
            )
        await asyncio.sleep(0.05)


async def cursor_key(conn: Any) -> bytes:
    """The secret that signs list cursors (made by migration 1, shared by replicas)."""
    return bytes(await conn.fetchval("SELECT value FROM server_meta WHERE key = 'cursor_key'"))
