"""``telemetry-server migrate --from sqlite:PATH --to postgresql://...``: the command line
of ``server.postgres.import_sqlite`` (what it copies, how it resumes and verifies).

Exit status: 0 when the target verified equal to the source's snapshot; 1 when the copy
failed part way (run it again: it goes on) or the verification found differences; 2 when
it could not start (a bad argument or URL, no such file, a file of another schema
version, a target it refuses). Every failure is one line on stderr, the URL's password
shown as ``***``; progress goes to stderr as JSON log lines, the summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson
import structlog

from server.postgres import import_sqlite
from server.postgres.errors import without_secrets
from server.postgres.url import DatabaseUrl, InvalidDatabaseUrl, parse_url
from server.storage.dump import Dump, DumpError

#: Seconds between progress lines.
PROGRESS_EVERY_S = 5.0
_EXAMPLES = 3

log = structlog.get_logger("server.migrate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("migrate")
    group.add_argument(
        "--from",
        dest="migrate_from",
        metavar="sqlite:PATH",
        help="migrate: the SQLite file to copy (sqlite:PATH or sqlite:///ABSOLUTE/PATH)",
    )
    group.add_argument(
        "--to",
        dest="migrate_to",
        metavar="postgresql://...",
        help="migrate: the PostgreSQL database to copy into (migrated first)",
    )
    group.add_argument(
        "--batch-rows",
        type=int,
        default=import_sqlite.BATCH_ROWS,
        help=f"migrate: runs per transaction (default {import_sqlite.BATCH_ROWS},"
        f" at most {import_sqlite.MAX_BATCH_ROWS:,})",
    )
    group.add_argument(
        "--resync",
        action="store_true",
        help="migrate: copy again the runs of every agent that differs (SQLite wins);"
        " for a last pass after the SQLite server stopped",
    )


class _Usage(ValueError):
    pass


def sqlite_path(value: str | None) -> Path:
    """``sqlite:PATH`` (relative or absolute) or ``sqlite:///ABSOLUTE/PATH``."""
    if not value:
        raise _Usage("migrate needs --from sqlite:PATH")
    scheme, colon, rest = value.partition(":")
    if not colon or scheme.lower() != "sqlite":
        raise _Usage(f"--from must be sqlite:PATH, not {value!r}")
    if rest.startswith("///"):
        rest = rest[2:]
    elif rest.startswith("//"):
        raise _Usage("--from: use sqlite:PATH or sqlite:///ABSOLUTE/PATH")
    if not rest:
        raise _Usage("--from names no file (sqlite:PATH)")
    return Path(rest)


def postgres_url(value: str | None) -> DatabaseUrl:
    if not value:
        raise _Usage("migrate needs --to postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    try:
        return parse_url(value)
    except InvalidDatabaseUrl as exc:
        raise _Usage(f"--to: {exc}") from None


def run_migrate(args: argparse.Namespace, *, busy_timeout_ms: int = 5000) -> int:
    try:
        path = sqlite_path(args.migrate_from)
        url = postgres_url(args.migrate_to)
        if not 1 <= args.batch_rows <= import_sqlite.MAX_BATCH_ROWS:
            raise _Usage(f"--batch-rows must be 1 to {import_sqlite.MAX_BATCH_ROWS:,}")
    except _Usage as exc:
        return _fail(str(exc), 2)
    try:
        dump = Dump.open(path, busy_timeout_ms=busy_timeout_ms)
    except DumpError as exc:
        return _fail(str(exc), 2)
    try:
        if dump.journal_mode != "wal":
            log.warning(
                "migrate_blocks_writes",
                journal_mode=dump.journal_mode,
                hint="not in WAL mode: a running server's commits wait for this copy's"
                " read lock; stop the server first",
            )
        log.info(
            "migrate_started",
            source=str(path),
            target=url.redacted,
            snapshot_runs=dump.runs,
            snapshot_max_id=dump.max_id,
            resync=args.resync,
        )
        outcome = asyncio.run(
            import_sqlite.run(
                dump,
                url,
                batch_rows=args.batch_rows,
                resync=args.resync,
                progress=_Progress(dump.max_id),
            )
        )
    except import_sqlite.MigrateRefused as exc:
        return _fail(str(exc), 2)
    except Exception as exc:  # the copy broke part way: say why, and that it resumes
        reason = without_secrets(" ".join(str(exc).split()) or type(exc).__name__, url.dsn)
        return _fail(
            f"copy into {url.redacted} stopped: {reason} ({type(exc).__name__});"
            " run migrate again to go on where it stopped",
            1,
        )
    finally:
        dump.close()
    print(orjson.dumps(_summary(path, url, outcome)).decode())
    if not outcome.verified:
        return _fail(_mismatch(outcome), 1)
    return 0


class _Progress:
    """A log line every few seconds: runs copied, and how far in the ids."""

    def __init__(self, max_id: int) -> None:
        self._max_id = max_id
        self._next = time.monotonic() + PROGRESS_EVERY_S

    def __call__(self, copied: int, last_id: int) -> None:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + PROGRESS_EVERY_S
            log.info("migrate_progress", copied=copied, last_id=last_id, max_id=self._max_id)


def _summary(path: Path, url: DatabaseUrl, outcome: import_sqlite.Outcome) -> dict[str, object]:
    return {
        "source": str(path),
        "target": url.redacted,
        "copied": outcome.copied,
        "source_runs": outcome.source_runs,
        "target_runs": outcome.target_runs,
        "agents": outcome.agents,
        "sidecars": outcome.sidecars,
        "resynced_agents": outcome.resynced_agents,
        "differing_agents": len(outcome.differing),
        "verified": outcome.verified,
        "seconds": round(outcome.seconds, 3),
        "copy_seconds": round(outcome.copy_seconds, 3),
        "verify_seconds": round(outcome.verify_seconds, 3),
    }


def _mismatch(outcome: import_sqlite.Outcome) -> str:
    parts = []
    if outcome.differing:
        examples = ", ".join(orjson.dumps(name).decode() for name in outcome.differing[:_EXAMPLES])
        more = ", ..." if len(outcome.differing) > _EXAMPLES else ""
        parts.append(
            f"the runs of {len(outcome.differing)} of {outcome.agents} agents differ"
            f" ({examples}{more}; source {outcome.source_runs} runs,"
            f" target {outcome.target_runs})"
        )
    if outcome.sidecars_differ:
        parts.append("the sidecars differ")
    return (
        f"verification failed: {'; '.join(parts)}. Runs changed after they were copied"
        " (the SQLite server kept writing, or something wrote to PostgreSQL): stop the"
        " writers and run migrate again with --resync (SQLite's rows win)"
    )


def _fail(message: str, code: int) -> int:
    print(f"telemetry-server migrate: {message}", file=sys.stderr)
    return code
