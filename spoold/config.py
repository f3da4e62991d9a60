"""spoold configuration: one frozen, validated object, loaded once at start-up.

Every setting is in ``SETTINGS`` (env name, field, meaning); the README table is
checked against it. Under systemd the spool defaults to ``$STATE_DIRECTORY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.runtime import settings as runtime_settings
from server.runtime.event_loop import EventLoopChoice
from server.runtime.event_loop import available as event_loop_available
from server.runtime.settings import ConfigError, Setting, load, require_pair, unset_if_empty

__all__ = ["SETTINGS", "ConfigError", "Setting", "SpooldConfig"]

SETTINGS: tuple[Setting, ...] = (
    Setting("SPOOLD_HOST", "host", "Address to listen on (keep it on loopback)."),
    Setting(
        "SPOOLD_PORT",
        "port",
        "TCP port to listen on; agents use TELEMETRY_API_URL=http://localhost:8765.",
    ),
    Setting(
        "SPOOLD_UPSTREAM_URL",
        "upstream_url",
        "Base URL of the central telemetry-server, or a comma-separated list of replicas of it "
        "(sharing one database), most preferred first: the drainer fails over to the next "
        "when one is down and comes back to the first when it is healthy again.",
    ),
    Setting(
        "SPOOLD_UPSTREAM_TOKEN", "upstream_token", "Bearer token sent upstream (never logged)."
    ),
    Setting(
        "SPOOLD_UPSTREAM_CA_FILE",
        "upstream_ca_file",
        "PEM CA bundle that an https:// upstream's certificate must chain to (default: the system trust store).",
    ),
    Setting(
        "SPOOLD_TLS_CERT_FILE",
        "tls_cert_file",
        "PEM certificate (chain) to serve agents over HTTPS; set together with SPOOLD_TLS_KEY_FILE.",
    ),
    Setting(
        "SPOOLD_TLS_KEY_FILE",
        "tls_key_file",
        "PEM private key of that certificate (unencrypted, readable by the daemon).",
    ),
    Setting(
        "SPOOLD_SPOOL_DIR",
        "spool_dir",
        "Directory of the spool, the runs index and the dead letters (default ./spool, or $STATE_DIRECTORY under systemd).",
    ),
    Setting(
        "SPOOLD_MAX_SPOOL_MB",
        "max_spool_mb",
        "Spool cap in MiB; beyond it writes get 503 with Retry-After.",
    ),
    Setting(
        "SPOOLD_MIN_FREE_DISK_MB",
        "min_free_disk_mb",
        "Free-disk floor in MiB under the spool; below it writes get 503.",
    ),
    Setting(
        "SPOOLD_BATCH_SIZE",
        "batch_size",
        "Most operations read per drain round; its batches also stay under "
        "SPOOLD_UPSTREAM_MAX_BODY_BYTES.",
    ),
    Setting(
        "SPOOLD_BATCH_MAX_ITEMS",
        "batch_max_items",
        "Most items an agent may send in one POST /api/v1/runs/batch; more get 413.",
    ),
    Setting(
        "SPOOLD_MAX_GROUP",
        "max_group",
        "Most operations committed in one spool item (1 = one fsync per request, for comparison).",
    ),
    Setting(
        "SPOOLD_GROUP_WINDOW_MS",
        "group_window_ms",
        "Group-commit window: writes arriving within it share one fsync.",
    ),
    Setting(
        "SPOOLD_SLOW_COMMIT_MS",
        "slow_commit_ms",
        "An accept commit at least this slow is logged (accept_commit_slow) with the time of "
        "each phase and what ran meanwhile; lower it to trace a latency tail (a line per such commit).",
    ),
    Setting(
        "SPOOLD_SHUTDOWN_DEADLINE_S",
        "shutdown_deadline_s",
        "On SIGTERM, the deadline of the whole stop (draining, in-flight requests, closing); keep the unit's TimeoutStopSec >= this + 6 s.",
    ),
    Setting(
        "SPOOLD_UPSTREAM_TIMEOUT_S", "upstream_timeout_s", "Timeout of one upstream batch request."
    ),
    Setting(
        "SPOOLD_LOOKUP_TIMEOUT_S",
        "lookup_timeout_s",
        "Timeout when asking the server about an unknown run or proxying a read.",
    ),
    Setting(
        "SPOOLD_BACKOFF_BASE_S",
        "backoff_base_s",
        "First retry delay; doubles per failure, with jitter.",
    ),
    Setting("SPOOLD_BACKOFF_CAP_S", "backoff_cap_s", "Longest retry delay."),
    Setting(
        "SPOOLD_MAX_BODY_BYTES",
        "max_body_bytes",
        "Largest request body accepted; larger bodies get 413.",
    ),
    Setting(
        "SPOOLD_UPSTREAM_MAX_BODY_BYTES",
        "upstream_max_body_bytes",
        "The server's body cap (its TELEMETRY_MAX_BODY_BYTES): a write that would not fit in a "
        "batch under it gets 413 here, and batches are kept under it.",
    ),
    Setting(
        "SPOOLD_UPSTREAM_MAX_JSON_DEPTH",
        "upstream_max_json_depth",
        "The server's nesting limit (its TELEMETRY_MAX_JSON_DEPTH): a write nested too deep "
        "once wrapped in a batch gets 400 here.",
    ),
    Setting(
        "SPOOLD_INDEX_RETENTION_S",
        "index_retention_s",
        "How long forwarded runs are remembered for duplicate detection.",
    ),
    Setting(
        "SPOOLD_INDEX_MAX_MB",
        "index_max_mb",
        "Bound on the delivered runs the runs index (runs-index.sqlite) keeps, besides the "
        "backlog's rows: past it the oldest delivered runs are forgotten first, before their "
        "retention ends (runs still queued never are). A delivered run costs about 200 bytes.",
    ),
    Setting(
        "SPOOLD_STARTUP_CHECK_MAX_MB",
        "startup_check_max_mb",
        "Whole-file checks at start-up (integrity of the runs index, a read of every queued "
        "spool row) for files up to this size; larger files are checked just after start-up, "
        "and damage found then makes spoold exit (status 70) and check the file before "
        "serving at its next start.",
    ),
    Setting(
        "SPOOLD_LOG_LEVEL", "log_level", "DEBUG, INFO (one line per request), WARNING or ERROR."
    ),
    Setting(
        "SPOOLD_EVENT_LOOP",
        "event_loop",
        "auto (uvloop when installed, as it is with the package; less CPU per request), "
        "uvloop (refuse to start without it) or asyncio (Python's own loop).",
    ),
    Setting(
        "SPOOLD_MAX_INFLIGHT_REQUESTS",
        "max_inflight_requests",
        "Requests handled at once; more get 503 with Retry-After (/health, /metrics exempt).",
    ),
    Setting(
        "SPOOLD_MAX_INFLIGHT_BYTES",
        "max_inflight_bytes",
        "Request body bytes held at once (at least SPOOLD_MAX_BODY_BYTES); a request that "
        "does not fit gets 503 with Retry-After, unread. Drain rounds are read at most this "
        "many bytes at a time too.",
    ),
    Setting(
        "SPOOLD_PRESENCE_INTERVAL_S",
        "presence_interval_s",
        "When no batch reached the server for this long (an empty spool, say), spoold posts a "
        "presence batch ([] with its X-Spoold-Id and X-Spoold-Queued-Since headers), so the "
        "server knows the sidecar is alive and what it still holds; keep it well under the "
        "server's TELEMETRY_SIDECAR_PRESENCE_S.",
    ),
)

#: Admission defaults, from the unit's MemoryMax=512M. A parsed body costs up to ~35 times
#: its bytes (measured: 5 MiB of `[[],[],...]` peaks at ~170 MiB: its Python objects plus
#: the encoded operation), so 6 MiB of bodies in flight (one of the largest, plus small
#: writes) cost at most ~210 MiB, leaving ~300 MiB for the process itself (~60 MiB) and the
#: drainer's decoded batches.
DEFAULT_MAX_INFLIGHT_BYTES = 6 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_REQUESTS = 256
#: How long a statement waits for another connection's lock on spoold's SQLite files before
#: it fails (passed to ``server.sqlite.connect``). The spool and the dead letters: 10 s
#: (the operator's command may hold them while it replays). The runs index: 5 s, as long
#: as its in-process write gate waits (``spoold.spool.writegate``).
SPOOL_BUSY_TIMEOUT_MS = 10_000
INDEX_BUSY_TIMEOUT_MS = 5_000
#: An accept commit at least this slow is logged with its phases (``spoold.accept.slow_commits``):
#: twice the p99 target, so only a commit that alone puts a write past it.
SLOW_COMMIT_MS = 50.0


def split_upstream_urls(value: str) -> tuple[str, ...]:
    """``SPOOLD_UPSTREAM_URL`` as its list of base URLs, in preference order.

    Each is an http(s) URL with a host (trailing ``/`` dropped); an empty element (``a,,b``,
    a trailing comma) and the same upstream twice (compared without a trailing ``/`` and
    case-insensitively in scheme and host) are refused: either is a typo that would
    otherwise skew the failover order. Messages name an element by its position and host,
    never by its credentials."""
    urls: list[str] = []
    seen: dict[tuple[str, str, str], int] = {}
    items = value.split(",")
    for position, item in enumerate(items, start=1):
        url = item.strip().rstrip("/")
        where = f"item {position} of {len(items)} " if len(items) > 1 else ""
        if not url:
            raise ValueError(f"{where}is empty" + (" (a stray comma?)" if where else ""))
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{where}must be an http:// or https:// URL")
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ValueError(f"{where}is not a valid URL (bad host or port)") from exc
        if not parts.hostname:
            raise ValueError(f"{where}has no host")
        key = (parts.scheme.lower(), f"{parts.hostname.lower()}:{port}", parts.path)
        if key in seen:
            raise ValueError(
                f"{where}repeats item {seen[key]} ({parts.hostname}): list each upstream once"
            )
        seen[key] = position
        urls.append(url)
    return tuple(urls)


def _which(some: list[str], every: tuple[str, ...]) -> str:
    """Which items of a list a message is about (nothing for a single URL)."""
    if len(every) == 1:
        return ""
    return " (item " + ", ".join(str(every.index(url) + 1) for url in some) + ")"


class SpooldConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    upstream_url: str = "http://127.0.0.1:8766"
    upstream_token: str | None = Field(default=None, repr=False)
    upstream_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    spool_dir: Path = Path("spool")
    max_spool_mb: float = Field(default=1024, gt=0)
    min_free_disk_mb: float = Field(default=256, ge=0)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    batch_max_items: int = Field(default=1000, ge=1, le=100_000)
    group_window_ms: float = Field(default=2.0, ge=0, le=100)
    max_group: int = Field(default=512, ge=1, le=10_000)
    slow_commit_ms: float = Field(default=SLOW_COMMIT_MS, ge=1, le=60_000)
    shutdown_deadline_s: float = Field(default=10.0, ge=0, le=3600)
    upstream_timeout_s: float = Field(default=10.0, gt=0, le=600)
    lookup_timeout_s: float = Field(default=2.0, gt=0, le=60)
    backoff_base_s: float = Field(default=0.2, gt=0, le=60)
    backoff_cap_s: float = Field(default=30.0, gt=0, le=3600)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=1024**3)
    upstream_max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=1024**3)
    upstream_max_json_depth: int = Field(default=32, ge=4, le=512)
    index_retention_s: float = Field(default=7 * 86_400, ge=0)
    index_max_mb: int = Field(default=256, ge=1, le=1024**2)
    startup_check_max_mb: float = Field(default=16, ge=0, le=1024**2)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    event_loop: EventLoopChoice = "auto"
    max_inflight_requests: int = Field(default=DEFAULT_MAX_INFLIGHT_REQUESTS, ge=1, le=1_000_000)
    max_inflight_bytes: int = Field(default=DEFAULT_MAX_INFLIGHT_BYTES, ge=1024, le=1024**4)
    presence_interval_s: float = Field(default=30.0, gt=0, le=3600)

    _event_loop_available = field_validator("event_loop")(event_loop_available)

    @field_validator("upstream_url")
    @classmethod
    def _http_urls(cls, value: str) -> str:
        return ",".join(split_upstream_urls(value))

    _empty_is_unset = field_validator(
        "upstream_ca_file", "tls_cert_file", "tls_key_file", mode="before"
    )(unset_if_empty)

    @model_validator(mode="after")
    def _tls_settings(self) -> SpooldConfig:
        require_pair(
            self.tls_cert_file, self.tls_key_file, "SPOOLD_TLS_CERT_FILE", "SPOOLD_TLS_KEY_FILE"
        )
        plain = [url for url in self.upstream_urls if not url.startswith("https://")]
        if self.upstream_ca_file is not None and plain:
            raise ValueError(
                "SPOOLD_UPSTREAM_CA_FILE is set but SPOOLD_UPSTREAM_URL is not https://"
                f"{_which(plain, self.upstream_urls)}: the CA would never be used and batches "
                "would travel in clear text"
            )
        return self

    @model_validator(mode="after")
    def _one_credential_upstream(self) -> SpooldConfig:
        # aiohttp refuses every request that has both: nothing would ever be delivered.
        with_credentials = [url for url in self.upstream_urls if "@" in urlsplit(url).netloc]
        if self.upstream_token is not None and with_credentials:
            raise ValueError(
                "SPOOLD_UPSTREAM_URL carries credentials (user:password@)"
                f"{_which(with_credentials, self.upstream_urls)} and SPOOLD_UPSTREAM_TOKEN is "
                "set: no request can send both; remove them from the URL"
            )
        return self

    @model_validator(mode="after")
    def _inflight_fits_a_body(self) -> SpooldConfig:
        runtime_settings.require_inflight_fits_a_body(
            "SPOOLD", self.max_inflight_bytes, self.max_body_bytes
        )
        return self

    @property
    def upstream_urls(self) -> tuple[str, ...]:
        """The upstreams, most preferred first (one for a single URL)."""
        return tuple(self.upstream_url.split(","))

    @property
    def drain_round_bytes(self) -> int:
        """Spooled bytes the drainer reads (and decodes) per round: one batch's worth, and
        never more than the admission budget, which is what the unit's MemoryMax is sized
        for - a server that takes larger batches must not make spoold decode more."""
        return min(self.upstream_max_body_bytes, self.max_inflight_bytes)

    @property
    def startup_check_max_bytes(self) -> int:
        return int(self.startup_check_max_mb * 1024 * 1024)

    @property
    def max_spool_bytes(self) -> int:
        return int(self.max_spool_mb * 1024 * 1024)

    @property
    def min_free_disk_bytes(self) -> int:
        return int(self.min_free_disk_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> SpooldConfig:
        """Build from environment variables, then explicit overrides (CLI flags)."""
        state_directory = env.get("STATE_DIRECTORY")
        if state_directory and "SPOOLD_SPOOL_DIR" not in env and overrides.get("spool_dir") is None:
            # systemd may list several directories separated by ':'; the first is ours.
            overrides["spool_dir"] = Path(state_directory.split(":")[0])
        return load(cls, SETTINGS, env, overrides)
