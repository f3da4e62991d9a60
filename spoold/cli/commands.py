"""Operator commands that work while the daemon is stopped: dead letters and spool stats.

``replay`` re-enqueues dead letters into the spool (``spoold.cli.replay``: every
page, and never older than the run's latest state), so it needs the spool's
directory lock: stop spoold first (systemctl stop spoold), replay, start it.
Which directory the commands use is decided by ``spoold.cli.locate``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import orjson

from spoold.cli.replay import open_and_replay
from spoold.config import SpooldConfig
from spoold.forward.limits import UpstreamLimits
from spoold.spool import DeadLetter, DeadLetterStore, SpoolLockedError, inspect_spool
from spoold.state.runs_index import RunsIndex
from spoold.state.storage import DEAD_LETTER_FILE, INDEX_FILE


def _print(value: Any, out: TextIO) -> None:
    out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _summary(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "event_id": letter.op.get("event_id"),
        "kind": letter.op.get("kind"),
        "error": letter.error,
        "status": letter.status,
        "attempts": letter.attempts,
        "first_failed_at": letter.first_failed_at,
        "last_failed_at": letter.last_failed_at,
    }


def deadletter_list(spool_dir: Path, *, limit: int, offset: int, out: TextIO = sys.stdout) -> int:
    with DeadLetterStore(spool_dir / DEAD_LETTER_FILE) as store:
        letters = store.list(limit=limit, offset=offset)
        total = store.count()
    body: dict[str, Any] = {"total": total, "items": [_summary(letter) for letter in letters]}
    if offset + len(letters) < total:  # say there is more, rather than look complete
        body["next_offset"] = offset + len(letters)
    _print(body, out)
    return 0


def deadletter_show(spool_dir: Path, letter_id: int, *, out: TextIO = sys.stdout) -> int:
    with DeadLetterStore(spool_dir / DEAD_LETTER_FILE) as store:
        letter = store.get(letter_id)
    if letter is None:
        print(f"spoold: no dead letter with id {letter_id}", file=sys.stderr)
        return 1
    _print({**_summary(letter), "operation": letter.op}, out)
    return 0


def deadletter_purge(spool_dir: Path, ids: list[int] | None, *, out: TextIO = sys.stdout) -> int:
    with DeadLetterStore(spool_dir / DEAD_LETTER_FILE) as store:
        removed = store.remove(ids) if ids else store.purge()
    _print({"purged": removed}, out)
    return 0


def deadletter_replay(
    spool_dir: Path,
    ids: list[int] | None,
    *,
    force: bool = False,
    limits: UpstreamLimits | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Move dead letters back into the spool; exit 1 if some had to be left (said why).

    ``limits``: the server's, as the daemon applies them at its door (default: the
    defaults of SPOOLD_UPSTREAM_MAX_BODY_BYTES / _MAX_JSON_DEPTH).
    """
    if limits is None:
        defaults = SpooldConfig()
        limits = UpstreamLimits(defaults.upstream_max_body_bytes, defaults.upstream_max_json_depth)
    try:
        report = open_and_replay(spool_dir, ids, force=force, limits=limits)
    except SpoolLockedError:
        print(
            "spoold: the daemon is running and owns the spool; stop it, then replay",
            file=sys.stderr,
        )
        return 2
    _print(report.as_json(), out)
    if report.left_invalid:
        print(
            f"spoold: {report.left_invalid} dead letters no longer validate and were kept "
            "(spoold deadletter show ID; purge them once read)",
            file=sys.stderr,
        )
    if report.left_unverified:
        print(
            f"spoold: {report.left_unverified} dead letters are of runs this spool no longer "
            "remembers, so their order cannot be checked; kept (replay --force sends them as "
            "they are)",
            file=sys.stderr,
        )
    if report.left_refused:
        print(
            f"spoold: {report.left_refused} dead letters would be refused by the server again "
            f"(larger than {limits.max_body_bytes} bytes or nested deeper than "
            f"{limits.max_json_depth} levels once in its batch envelope); kept "
            "(spoold deadletter show ID; purge them once read)",
            file=sys.stderr,
        )
    if report.not_found:
        print(f"spoold: no dead letters with ids {report.not_found}", file=sys.stderr)
    return 0 if report.complete else 1


def spool_stats(spool_dir: Path, *, out: TextIO = sys.stdout) -> int:
    stats = inspect_spool(spool_dir)
    body: dict[str, Any] = {
        "depth": stats.depth_ops,
        "groups": stats.depth_groups,
        "bytes": stats.bytes,
        "file_bytes": stats.file_bytes,
        "oldest_age_s": stats.oldest_age_s,
        "disk_free_bytes": stats.disk_free_bytes,
    }
    dead_letter_path = spool_dir / DEAD_LETTER_FILE
    if dead_letter_path.exists():
        with DeadLetterStore(dead_letter_path) as store:
            body["dead_letters"] = store.count()
    index_path = spool_dir / INDEX_FILE
    if index_path.exists():
        index = RunsIndex(index_path, readonly=True)
        try:
            body["counters"] = index.counters()
        finally:
            index.close()
    _print(body, out)
    return 0
