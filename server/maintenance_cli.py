"""``telemetry-server prune | vacuum | export``: operator commands beside ``serve``.

* ``prune`` asks the running server (``POST /api/v1/maintenance/prune``): its
  writer deletes the batches between client writes and keeps its in-memory
  counts exact. With no server answering on the configured address it opens the
  file itself, the way the server does (same writer, same batches, same triggers).
* ``vacuum`` rewrites the file once in incremental auto-vacuum mode (files made
  before this mode was the default), so that later prunes give space back. It
  holds the write lock for the whole rewrite: it refuses while a server answers.
* ``export`` reads the file read-only in one transaction (safe beside a running
  server) and writes a temporary file beside ``--out``, renamed into place once
  complete and fsync'd.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from server.app import storage_settings
from server.config import ServerConfig
from server.contract.models import RunQuery
from server.storage.connection import SQLiteError, open_writer
from server.storage.database import Database
from server.storage.export import FORMATS, Export
from server.storage.retention import (
    PrunePlan,
    Pruner,
    RetentionError,
    check_statuses,
    convert_to_incremental,
    cut_for,
    incremental_enabled,
    parse_age,
)

PRUNE_PATH = "/api/v1/maintenance/prune"
#: How long a prune through the server may take before the CLI gives up waiting.
PRUNE_TIMEOUT_S = 6 * 3600
PROBE_TIMEOUT_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prune, vacuum and export")
    group.add_argument("--older-than", help="prune: age of the cut, e.g. 90d, 12w, 36h")
    group.add_argument("--dry-run", action="store_true", help="prune: only count")
    group.add_argument(
        "--status",
        action="append",
        help="prune: a finished status to delete (repeatable; default all but running); "
        "export: the status filter",
    )
    group.add_argument("--json", action="store_true", help="prune, vacuum: print JSON")
    group.add_argument("--force", action="store_true", help="vacuum: even if a server answers")
    group.add_argument("--format", choices=FORMATS, default="ndjson", help="export format")
    group.add_argument("--out", type=Path, help="export: destination file ('-' for stdout)")
    group.add_argument("--escape-formulas", action="store_true", help="export csv: see API")
    for name in (
        "agent-name",
        "job-type",
        "created-after",
        "created-before",
        "start-time-from",
        "start-time-to",
    ):
        group.add_argument(f"--{name}", help=f"export: the list's {name.replace('-', '_')} filter")


def _fail(message: str, code: int = 2) -> int:
    print(f"telemetry-server: {message}", file=sys.stderr)
    return code


# ---- prune ------------------------------------------------------------------------------


def run_prune(config: ServerConfig, args: argparse.Namespace) -> int:
    if not args.older_than:
        return _fail("prune needs --older-than, e.g. --older-than 90d")
    try:
        plan = PrunePlan(cut_for(parse_age(args.older_than)), check_statuses(args.status))
    except RetentionError as exc:
        return _fail(str(exc))
    body = {"older_than": args.older_than, "statuses": list(plan.statuses)}
    body["dry_run"] = args.dry_run
    try:
        report = _prune_through_server(config, body)
        report["mode"] = "server"
    except _NoServer:
        if not config.db_path.exists():
            return _fail(f"no database at {config.db_path}", 1)
        report = asyncio.run(_prune_file(config, plan, dry_run=args.dry_run))
        report["mode"] = "file"
    except _ServerRefused as exc:
        return _fail(str(exc), 1)
    _print_report(report, as_json=args.json)
    return 0


class _NoServer(Exception):
    pass


class _ServerRefused(Exception):
    pass


_ANY_ADDRESS = frozenset(("", "0.0.0.0", "::"))  # noqa: S104 (compared, not bound)


def server_url(config: ServerConfig) -> str:
    """The configured server's URL (always http or https, built here)."""
    host = config.host
    if host in _ANY_ADDRESS:  # the server listens everywhere: ask it on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.tls_cert_file else "http"
    return f"{scheme}://{host}:{config.port}"


def _tls(config: ServerConfig) -> ssl.SSLContext | None:
    """Trust exactly the server's own certificate (it may be self-signed, for any name)."""
    if config.tls_cert_file is None:
        return None
    context = ssl.create_default_context(cafile=str(config.tls_cert_file))
    context.check_hostname = False
    return context


def _request(
    config: ServerConfig, method: str, path: str, body: Any, timeout_s: float
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if config.auth_enabled and config.auth_token:
        headers["Authorization"] = f"Bearer {config.auth_token}"
    data = None if body is None else orjson.dumps(body)
    url = server_url(config) + path  # http(s) only: built by server_url
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=_tls(config)) as reply:  # noqa: S310
            return reply.status, orjson.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            detail = orjson.loads(exc.read()).get("detail")
        except (orjson.JSONDecodeError, AttributeError):
            detail = exc.reason
        return exc.code, {"detail": detail}
    except (urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError | FileNotFoundError):
            raise _NoServer from exc
        raise _ServerRefused(f"server at {server_url(config)} did not answer: {reason}") from exc


def _prune_through_server(config: ServerConfig, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = _request(config, "POST", PRUNE_PATH, body, PRUNE_TIMEOUT_S)
    if status == 404:
        raise _ServerRefused(
            f"the server at {server_url(config)} has no {PRUNE_PATH} (older version?)"
        )
    if status != 200 or not isinstance(answer, dict):
        detail = answer.get("detail") if isinstance(answer, dict) else answer
        raise _ServerRefused(f"the server refused the prune ({status}): {detail}")
    return answer


async def _prune_file(config: ServerConfig, plan: PrunePlan, *, dry_run: bool) -> dict[str, Any]:
    database = await asyncio.to_thread(Database.open, storage_settings(config))
    try:
        pruner = Pruner(database.writer.run, database.reader.run, sleep=asyncio.sleep)
        report = await pruner.run(plan, dry_run=dry_run)
    finally:
        await database.close()
    return report.as_dict()


def _print_report(report: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(report).decode())
        return
    verb = "would delete" if report.get("dry_run") else "deleted"
    statuses = ", ".join(f"{s}={n}" for s, n in sorted(report.get("by_status", {}).items()))
    print(
        f"prune ({report.get('mode')}): {verb} {report['deleted']} runs created and ended "
        f"before {report['cut']}" + (f" ({statuses})" if statuses else "")
    )
    if not report.get("dry_run"):
        print(
            f"  {report['batches']} batches, longest {report['max_batch_ms']} ms; "
            f"{report['vacuumed_pages']} pages given back in {report['seconds']} s"
        )
    if not report.get("incremental_vacuum"):
        print(
            "  the file is not in incremental auto-vacuum mode: freed pages are reused, the "
            "file does not shrink (see `telemetry-server vacuum`)"
        )


# ---- vacuum -----------------------------------------------------------------------------


def server_answers(config: ServerConfig) -> bool:
    try:
        _request(config, "GET", "/health", None, PROBE_TIMEOUT_S)
    except (_NoServer, _ServerRefused):
        return False
    return True


def run_vacuum(config: ServerConfig, args: argparse.Namespace) -> int:
    if not config.db_path.exists():
        return _fail(f"no database at {config.db_path}", 1)
    if not args.force and server_answers(config):
        return _fail(
            f"a server answers at {server_url(config)}: stop it first (vacuum rewrites the "
            "whole file and blocks writes meanwhile), or pass --force",
            1,
        )
    before = _file_bytes(config.db_path)
    started = time.monotonic()
    conn = open_writer(
        config.db_path,
        journal_mode=config.journal_mode,
        synchronous=config.synchronous,
        busy_timeout_ms=config.busy_timeout_ms,
    )
    try:
        changed = convert_to_incremental(conn)
        incremental = incremental_enabled(conn)
    except SQLiteError as exc:
        return _fail(f"vacuum failed: {exc}", 1)
    finally:
        conn.close()
    report = {
        "db_path": str(config.db_path),
        "converted": changed,
        "incremental_vacuum": incremental,
        "bytes_before": before,
        "bytes_after": _file_bytes(config.db_path),
        "seconds": round(time.monotonic() - started, 3),
    }
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        print(
            f"vacuum: {report['bytes_before']} -> {report['bytes_after']} bytes in "
            f"{report['seconds']} s; incremental auto-vacuum "
            f"{'now on' if changed else 'was already on'}"
        )
    return 0


def _file_bytes(path: Path) -> int:
    return sum(
        Path(f"{path}{suffix}").stat().st_size
        for suffix in ("", "-wal")
        if Path(f"{path}{suffix}").exists()
    )


# ---- export -----------------------------------------------------------------------------


def export_query(args: argparse.Namespace) -> RunQuery:
    statuses = args.status or []
    if len(statuses) > 1:
        raise ValueError("export takes one --status")
    filters = {
        "agent_name": args.agent_name,
        "job_type": args.job_type,
        "status": statuses[0] if statuses else None,
        "created_after": args.created_after,
        "created_before": args.created_before,
        "start_time_from": args.start_time_from,
        "start_time_to": args.start_time_to,
    }
    return RunQuery.model_validate({k: v for k, v in filters.items() if v is not None})


def run_export(config: ServerConfig, args: argparse.Namespace) -> int:
    if args.out is None:
        return _fail("export needs --out FILE (or --out - for stdout)")
    try:
        query = export_query(args)
    except (ValueError, ValidationError) as exc:
        return _fail(f"bad export filter: {exc}")
    if not config.db_path.exists():
        return _fail(f"no database at {config.db_path}", 1)
    started = time.monotonic()
    try:
        export = Export.open(
            config.db_path,
            query,
            args.format,
            busy_timeout_ms=config.busy_timeout_ms,
            escape_formulas=args.escape_formulas,
        )
    except SQLiteError as exc:
        return _fail(f"cannot read {config.db_path}: {exc}", 1)
    try:
        if str(args.out) == "-":
            for chunk in export.chunks():
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        else:
            _write_atomically(args.out, export)
    except (OSError, SQLiteError) as exc:
        return _fail(f"export failed: {exc}", 1)
    finally:
        export.close()
    summary = {
        "out": str(args.out),
        "format": args.format,
        "rows": export.rows,
        "seconds": round(time.monotonic() - started, 3),
    }
    print(orjson.dumps(summary).decode(), file=sys.stderr if str(args.out) == "-" else sys.stdout)
    return 0


def _write_atomically(destination: Path, export: Export) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    try:
        with partial.open("wb") as handle:
            for chunk in export.chunks():
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    directory = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
