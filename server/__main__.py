"""``telemetry-server``: read flags and environment, configure logging, serve."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson
import structlog

from server import __version__, maintenance_cli, migrate_cli
from server.app import create_app
from server.config import ConfigError, ServerConfig
from server.postgres.errors import CannotOpen
from server.runtime import daemon
from server.runtime.exposure import Exposure
from server.runtime.logs import configure_logging
from server.runtime.tls import TLSSetupError, listener_context
from server.sqlite.version import SqliteTooOld, check_sqlite_version
from server.storage.backup import BackupError, backup


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="telemetry-server",
        description="Local Telemetry central server (API guide v3.0.0). "
        "Flags override the TELEMETRY_* environment variables.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "backup", "prune", "vacuum", "export", "migrate"],
        help="serve (default); backup DEST: a consistent online copy of the database; "
        "prune --older-than AGE: delete old finished runs; vacuum: rewrite the file so "
        "prunes give space back; export --out FILE: every run matching the filters; "
        "migrate --from sqlite:PATH --to postgresql://...: copy a SQLite database into "
        "PostgreSQL (resumable) and verify it",
    )
    parser.add_argument("destination", nargs="?", type=Path, help="backup file or directory")
    parser.add_argument("--host", help="listen address (TELEMETRY_API_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (TELEMETRY_API_PORT, default 8766)")
    parser.add_argument(
        "--db", type=Path, help="SQLite file (TELEMETRY_DB_PATH, default ./data/telemetry.sqlite)"
    )
    parser.add_argument("--version", action="version", version=__version__)
    maintenance_cli.add_arguments(parser)
    migrate_cli.add_arguments(parser)
    return parser.parse_args(argv)


def run_backup(config: ServerConfig, destination: Path | None) -> int:
    """``telemetry-server backup DEST``: safe while the server is running and writing."""
    if destination is None:
        print("telemetry-server: backup needs a destination file or directory", file=sys.stderr)
        return 2
    try:
        result = backup(config.db_path, destination, busy_timeout_ms=config.busy_timeout_ms)
    except BackupError as exc:
        print(f"telemetry-server: {exc}", file=sys.stderr)
        return 1
    print(
        orjson.dumps(
            {
                "backup": str(result.destination),
                "bytes": result.bytes,
                "runs": result.runs,
                "seconds": round(result.seconds, 3),
            }
        ).decode()
    )
    return 0


#: GIL switch interval. The writer thread hands the GIL back for every SQLite statement
#: and needs it again after; at the default 5 ms it can wait that long behind the event
#: loop's Python (and the loop behind it), which is queueing the requests feel.
GIL_SWITCH_INTERVAL_S = 0.001


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = ServerConfig.from_env(os.environ, host=args.host, port=args.port, db_path=args.db)
    except ConfigError as exc:
        print(f"telemetry-server: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command in _ON_POSTGRES and config.postgres_url() is not None:
        print(
            f"telemetry-server {args.command}: the server's database is PostgreSQL"
            f" (TELEMETRY_DATABASE_URL): {_ON_POSTGRES[args.command]}",
            file=sys.stderr,
        )
        return 2
    if args.command == "backup":
        return run_backup(config, args.destination)
    if args.command == "migrate":  # names its own source and target: no TELEMETRY_* needed
        configure_logging(config.log_level, stream=sys.stderr)  # stdout: the summary
        return migrate_cli.run_migrate(args, busy_timeout_ms=config.busy_timeout_ms)
    if args.command in ("prune", "vacuum", "export"):
        configure_logging(config.log_level, stream=sys.stderr)  # stdout: the command's answer
        command = {
            "prune": maintenance_cli.run_prune,
            "vacuum": maintenance_cli.run_vacuum,
            "export": maintenance_cli.run_export,
        }[args.command]
        return command(config, args)
    try:
        tls = listener_context(config.tls_cert_file, config.tls_key_file)
    except TLSSetupError as exc:
        print(f"telemetry-server: TLS configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    log = structlog.get_logger("server")
    try:
        check_sqlite_version(needs_json=True)
    except SqliteTooOld as exc:
        log.error("sqlite_too_old", error=str(exc))
        print(f"telemetry-server: {exc}", file=sys.stderr)
        return 1
    log.info(
        "server_starting",
        host=config.host,
        port=config.port,
        **_database_shown(config),
        version=__version__,
        auth_enabled=config.auth_enabled,
        rate_limit_enabled=config.rate_limit_enabled,
        tls=tls is not None,
    )
    try:
        daemon.run(
            create_app(config),
            host=config.host,
            port=config.port,
            shutdown_timeout_s=config.shutdown_timeout_s,
            name="server",
            ssl_context=tls,
            exposure=exposure(config, tls=tls is not None),
            event_loop=config.event_loop,
        )
    except CannotOpen as exc:  # PostgreSQL refused or absent: one line, no traceback
        setting = (
            "TELEMETRY_DATABASE_URL"
            if os.environ.get("TELEMETRY_DATABASE_URL", "").strip()
            else "DATABASE_URL"
        )
        log.error("db_open_failed", setting=setting, error=str(exc))
        print(f"telemetry-server: {setting}: {exc}", file=sys.stderr)
        return 1
    return 0


def _database_shown(config: ServerConfig) -> dict[str, str]:
    """The database as the start-up log shows it: the file, or the URL without password."""
    url = config.postgres_url()
    if url is None:
        return {"backend": "sqlite", "db_path": str(config.db_path)}
    return {"backend": "postgresql", "database_url": url.redacted}


#: The maintenance commands on PostgreSQL: what to use instead (they work on SQLite's file).
_ON_POSTGRES = {
    "backup": "use pg_dump (or pg_basebackup and WAL archiving) on the PostgreSQL database",
    "vacuum": "PostgreSQL reclaims space itself (autovacuum); VACUUM FULL is the DBA's tool",
    "export": "export is not available on PostgreSQL yet; walk GET /api/v1/runs with its cursor",
    "prune": "set TELEMETRY_RETENTION_DAYS on the servers (the elected replica prunes), or"
    " POST /api/v1/maintenance/prune to a running server",
}


def exposure(config: ServerConfig, *, tls: bool) -> Exposure:
    """What the server warns about when it listens beyond loopback."""
    return Exposure(
        tls=tls,
        tls_hint="set TELEMETRY_TLS_CERT_FILE and TELEMETRY_TLS_KEY_FILE",
        auth_missing=None
        if config.auth_enabled
        else "anyone who can reach this port can write and read runs: "
        "set TELEMETRY_API_AUTH_ENABLED=true with a TELEMETRY_API_AUTH_TOKEN",
    )


if __name__ == "__main__":
    sys.exit(main())
