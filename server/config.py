"""Server configuration: one frozen, validated object, loaded once at start-up.

Environment variable names are the reference implementation's, so an operator
can switch without rewriting configs. Every setting is listed in ``SETTINGS``
(name, field, default, meaning); the README table is checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.contract.fields import HEARTBEAT_TIMEOUT_MAX_S
from server.postgres.url import DatabaseUrl, InvalidDatabaseUrl, parse_url, url_from_environment
from server.runtime import settings as runtime_settings
from server.runtime.event_loop import EventLoopChoice
from server.runtime.event_loop import available as event_loop_available
from server.runtime.settings import ConfigError, Setting, load, require_pair, unset_if_empty
from server.storage.stale import DEFAULT_STALE_AFTER_S, StalePolicy, parse_job_allowances

__all__ = ["SETTINGS", "ConfigError", "ServerConfig", "Setting"]


SETTINGS: tuple[Setting, ...] = (
    Setting("TELEMETRY_API_HOST", "host", "Address to listen on."),
    Setting("TELEMETRY_API_PORT", "port", "TCP port to listen on."),
    Setting("TELEMETRY_DB_PATH", "db_path", "SQLite database file (created if absent)."),
    Setting(
        "TELEMETRY_DATABASE_URL",
        "database_url",
        "A `postgresql://user:password@host:port/database` URL: the server runs on that "
        "PostgreSQL database instead of the SQLite file (several servers may share it). "
        "Empty or absent: SQLite at TELEMETRY_DB_PATH. A `postgresql://` DATABASE_URL is "
        "taken when this is absent. Several hosts, as libpq writes them "
        "(`postgresql://u:p@db1:5432,db2:5432/db?target_session_attrs=read-write`): the "
        "server uses the first writable one, so it follows a promoted standby. The password "
        "is never logged.",
    ),
    Setting(
        "TELEMETRY_DB_JOURNAL_MODE",
        "journal_mode",
        "SQLite journal mode: WAL, DELETE, TRUNCATE, PERSIST or MEMORY.",
    ),
    Setting(
        "TELEMETRY_DB_SYNCHRONOUS",
        "synchronous",
        "SQLite synchronous mode: OFF, NORMAL, FULL or EXTRA.",
    ),
    Setting(
        "TELEMETRY_DB_BUSY_TIMEOUT_MS",
        "busy_timeout_ms",
        "How long a write waits for a lock held by another process before answering 503.",
    ),
    Setting(
        "TELEMETRY_DB_READER_THREADS",
        "reader_threads",
        "Threads (each with its own read-only connection) serving queries.",
    ),
    Setting(
        "TELEMETRY_DB_WAL_RESTART_PAGES",
        "wal_restart_pages",
        "In WAL mode, checkpoints run on a thread of their own (never inside a commit) and "
        "the WAL is started over once it holds this many pages at the once-a-second pass "
        "(4 KiB each by default; under heavy writes it holds more by then); "
        "0 = SQLite's own checkpoint inside the commit that passes 1,000 pages.",
    ),
    Setting(
        "TELEMETRY_API_AUTH_ENABLED",
        "auth_enabled",
        "Require `Authorization: Bearer <token>` on writes.",
    ),
    Setting(
        "TELEMETRY_API_AUTH_TOKEN",
        "auth_token",
        "The bearer token (required when auth is enabled; never logged).",
    ),
    Setting(
        "TELEMETRY_API_AUTH_PROTECT_READS",
        "auth_protect_reads",
        "Also require the token on every read of run data: queries and metadata (401 "
        "without it); /metrics agent names and the database path in /health and /metrics "
        "(left out without it). Needs TELEMETRY_API_AUTH_ENABLED=true: start-up refuses it "
        "otherwise.",
    ),
    Setting(
        "TELEMETRY_UI_SESSION_HOURS",
        "ui_session_hours",
        "With protected reads, how long a dashboard sign-in lasts (1-720 hours); the "
        "browser then asks for the token again.",
    ),
    Setting(
        "TELEMETRY_TLS_CERT_FILE",
        "tls_cert_file",
        "PEM certificate (chain) to serve HTTPS with; set together with TELEMETRY_TLS_KEY_FILE.",
    ),
    Setting(
        "TELEMETRY_TLS_KEY_FILE",
        "tls_key_file",
        "PEM private key of that certificate (unencrypted, readable by the daemon).",
    ),
    Setting(
        "TELEMETRY_RATE_LIMIT_ENABLED", "rate_limit_enabled", "Limit requests per client address."
    ),
    Setting(
        "TELEMETRY_RATE_LIMIT_RPM",
        "rate_limit_rpm",
        "Requests per minute allowed per client (token bucket, burst = RPM); on"
        " PostgreSQL one budget shared by all replicas (give them the same value).",
    ),
    Setting(
        "TELEMETRY_RATE_LIMIT_MAX_CLIENTS",
        "rate_limit_max_clients",
        "Clients tracked at once; the least recently seen are forgotten first.",
    ),
    Setting(
        "TELEMETRY_LOG_LEVEL", "log_level", "DEBUG, INFO (one line per request), WARNING or ERROR."
    ),
    Setting(
        "TELEMETRY_EVENT_LOOP",
        "event_loop",
        "auto (uvloop when installed, as it is with the package; less CPU per request), "
        "uvloop (refuse to start without it) or asyncio (Python's own loop).",
    ),
    Setting(
        "TELEMETRY_MAX_BODY_BYTES",
        "max_body_bytes",
        "Largest request body accepted; larger bodies get 413.",
    ),
    Setting(
        "TELEMETRY_MAX_JSON_DEPTH",
        "max_json_depth",
        "Deepest JSON nesting accepted; deeper bodies get 400.",
    ),
    Setting(
        "TELEMETRY_BATCH_MAX_ITEMS",
        "batch_max_items",
        "Most items in one batch request; more get 413.",
    ),
    Setting(
        "TELEMETRY_METADATA_CACHE_TTL_S",
        "metadata_ttl_s",
        "Deprecated, ignored: /api/v1/metadata is kept current by the writer (no cache, no TTL); still accepted so configs keep working.",
    ),
    Setting(
        "TELEMETRY_SHUTDOWN_TIMEOUT_S",
        "shutdown_timeout_s",
        "On SIGTERM, the deadline of the whole stop (in-flight requests, then the writer); keep the unit's TimeoutStopSec >= this + 6 s.",
    ),
    Setting(
        "TELEMETRY_MAX_INFLIGHT_REQUESTS",
        "max_inflight_requests",
        "Requests handled at once; more get 503 with Retry-After (/health, /metrics exempt).",
    ),
    Setting(
        "TELEMETRY_MAX_INFLIGHT_BYTES",
        "max_inflight_bytes",
        "Request body bytes held at once (at least TELEMETRY_MAX_BODY_BYTES); a request that "
        "does not fit gets 503 with Retry-After, unread.",
    ),
    Setting(
        "TELEMETRY_STALE_AFTER_S",
        "stale_after_s",
        "Seconds without any write after which a `running` run is stale and the reaper "
        "marks it `timeout`, for runs without their own heartbeat_timeout_s and job types "
        "not in TELEMETRY_STALE_AFTER_BY_JOB; 0 = never.",
    ),
    Setting(
        "TELEMETRY_STALE_AFTER_BY_JOB",
        "stale_after_by_job",
        "Per job type allowances, `job=seconds` pairs separated by commas (e.g. "
        "`nightly-etl=7200,crawl=600`; 0 = never for that job type); bad syntax stops start-up.",
    ),
    Setting(
        "TELEMETRY_SIDECAR_PRESENCE_S",
        "sidecar_presence_s",
        "A sidecar heard from within this many seconds is present: its overdue runs are "
        "reaped once nothing it still queues is older than their deadline.",
    ),
    Setting(
        "TELEMETRY_SIDECAR_LOST_S",
        "sidecar_lost_s",
        "A sidecar silent for longer than this is gone, and its overdue runs are reaped; "
        "between the two, they wait (an outage is not staleness). More than "
        "TELEMETRY_SIDECAR_PRESENCE_S.",
    ),
    Setting(
        "TELEMETRY_REAPER_INTERVAL_S",
        "reaper_interval_s",
        "Seconds between two passes of the stale-run reaper (a pass with nothing stale is "
        "one indexed read).",
    ),
    # ---- retention ----
    Setting(
        "TELEMETRY_RETENTION_DAYS",
        "retention_days",
        "Delete finished runs older than this many days (created and ended before the cut), "
        "in the background; 0 or empty = keep everything (the default).",
    ),
    Setting(
        "TELEMETRY_RETENTION_INTERVAL_S",
        "retention_interval_s",
        "With retention on: seconds between two background prune passes (the first runs at "
        "start-up).",
    ),
)

#: Admission defaults, from the unit's MemoryMax=2G. A parsed body costs up to ~32 times
#: its bytes (measured: 5 MiB of `[[],[],...]` peaks at ~160 MiB of Python objects), so
#: 48 MiB of bodies in flight cost at most ~1.5 GiB, leaving ~0.5 GiB for the process
#: itself (~60 MiB), SQLite caches (the writer's 64 MiB, ``WRITER_CACHE_KIB``; 2 MiB per
#: reader) and the reader threads' results.
DEFAULT_MAX_INFLIGHT_BYTES = 48 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_REQUESTS = 1024
#: Below this the WAL would restart every few groups, each time costing the writer an fsync.
MIN_WAL_RESTART_PAGES = 64


class ServerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8766, ge=0, le=65535)
    db_path: Path = Path("data/telemetry.sqlite")
    #: PostgreSQL instead of SQLite (checked here, once: ``postgres_url``).
    database_url: str | None = Field(default=None, repr=False)
    journal_mode: Literal["WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY"] = "WAL"
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    busy_timeout_ms: int = Field(default=2000, ge=0, le=600_000)
    auth_enabled: bool = False
    auth_token: str | None = Field(default=None, repr=False)
    auth_protect_reads: bool = False
    ui_session_hours: int = Field(default=12, ge=1, le=720)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    rate_limit_enabled: bool = False
    rate_limit_rpm: int = Field(default=60, ge=1, le=1_000_000)
    rate_limit_max_clients: int = Field(default=10_000, ge=1, le=10_000_000)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    event_loop: EventLoopChoice = "auto"
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=1024**3)
    max_json_depth: int = Field(default=32, ge=2, le=512)
    batch_max_items: int = Field(default=1000, ge=1, le=100_000)
    metadata_ttl_s: float = Field(default=300.0, ge=0, le=86_400)
    shutdown_timeout_s: float = Field(default=10.0, ge=0, le=3600)
    reader_threads: int = Field(default=4, ge=1, le=64)
    wal_restart_pages: int = Field(default=8000, ge=0, le=1_000_000)
    max_inflight_requests: int = Field(default=DEFAULT_MAX_INFLIGHT_REQUESTS, ge=1, le=1_000_000)
    max_inflight_bytes: int = Field(default=DEFAULT_MAX_INFLIGHT_BYTES, ge=1024, le=1024**4)
    stale_after_s: int = Field(default=DEFAULT_STALE_AFTER_S, ge=0, le=HEARTBEAT_TIMEOUT_MAX_S)
    stale_after_by_job: dict[str, int] = Field(default_factory=dict)
    sidecar_presence_s: float = Field(default=120.0, gt=0, le=86_400)
    sidecar_lost_s: float = Field(default=86_400.0, gt=0, le=365 * 86_400)
    reaper_interval_s: float = Field(default=30.0, ge=0.01, le=86_400)

    _job_allowances = field_validator("stale_after_by_job", mode="before")(parse_job_allowances)
    retention_days: int = Field(default=0, ge=0, le=36_500)
    retention_interval_s: float = Field(default=3600.0, ge=1, le=7 * 86_400)

    _empty_is_unset = field_validator("tls_cert_file", "tls_key_file", mode="before")(
        unset_if_empty
    )

    _event_loop_available = field_validator("event_loop")(event_loop_available)

    @field_validator("database_url")
    @classmethod
    def _database_url_usable(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_url(value)  # InvalidDatabaseUrl is a ValueError: its message hides the password
        return value

    @field_validator("retention_days", mode="before")
    @classmethod
    def _empty_retention_is_off(cls, value: Any) -> Any:
        return 0 if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _token_when_auth(self) -> ServerConfig:
        if self.auth_enabled and not self.auth_token:
            raise ValueError(
                "TELEMETRY_API_AUTH_TOKEN must be set when TELEMETRY_API_AUTH_ENABLED=true"
            )
        return self

    @model_validator(mode="after")
    def _protect_reads_needs_auth(self) -> ServerConfig:
        # Without auth there is no token to check: reads would stay open while the
        # operator believes them protected.
        if self.auth_protect_reads and not self.auth_enabled:
            raise ValueError(
                "TELEMETRY_API_AUTH_PROTECT_READS=true needs TELEMETRY_API_AUTH_ENABLED=true "
                "(and a TELEMETRY_API_AUTH_TOKEN): without auth nothing would be protected"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        require_pair(
            self.tls_cert_file,
            self.tls_key_file,
            "TELEMETRY_TLS_CERT_FILE",
            "TELEMETRY_TLS_KEY_FILE",
        )
        return self

    @model_validator(mode="after")
    def _wal_restart_sane(self) -> ServerConfig:
        if 0 < self.wal_restart_pages < MIN_WAL_RESTART_PAGES:
            raise ValueError(
                f"TELEMETRY_DB_WAL_RESTART_PAGES must be 0 (SQLite's own checkpoints) or at "
                f"least {MIN_WAL_RESTART_PAGES}"
            )
        return self

    @model_validator(mode="after")
    def _inflight_fits_a_body(self) -> ServerConfig:
        runtime_settings.require_inflight_fits_a_body(
            "TELEMETRY", self.max_inflight_bytes, self.max_body_bytes
        )
        return self

    @model_validator(mode="after")
    def _lost_after_presence(self) -> ServerConfig:
        if self.sidecar_lost_s <= self.sidecar_presence_s:
            raise ValueError(
                "TELEMETRY_SIDECAR_LOST_S must be more than TELEMETRY_SIDECAR_PRESENCE_S"
            )
        return self

    def stale_policy(self) -> StalePolicy:
        """The reaper's rule, from these settings."""
        return StalePolicy(
            default_s=self.stale_after_s,
            by_job=tuple(sorted(self.stale_after_by_job.items())),
            presence_s=self.sidecar_presence_s,
            lost_s=self.sidecar_lost_s,
        )

    def postgres_url(self) -> DatabaseUrl | None:
        """The PostgreSQL database to serve from, or None: SQLite at ``db_path``."""
        return parse_url(self.database_url) if self.database_url else None

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> ServerConfig:
        """Build from environment variables, then explicit overrides (CLI flags).
        ``DATABASE_URL`` (the reference's name) counts only when it is a PostgreSQL URL
        and TELEMETRY_DATABASE_URL is absent (see ``url_from_environment``)."""
        if not env.get("TELEMETRY_DATABASE_URL", "").strip():
            try:
                fallback = url_from_environment(env)
            except InvalidDatabaseUrl as exc:
                raise ConfigError(str(exc)) from None
            if fallback is not None:
                overrides = {"database_url": fallback.dsn, **overrides}
        return load(cls, SETTINGS, env, overrides)
