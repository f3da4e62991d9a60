"""Operator commands that work while the daemon is stopped: dead letters and spool stats.

``replay`` re-enqueues dead letters into the spool, so it needs the spool's
directory lock: stop spoold first (systemctl stop spoold), replay, start it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import orjson

from spoold.app import DEAD_LETTER_FILE, INDEX_FILE
from spoold.operations import validate_op
from spoold.recovery import reconcile
from spoold.runs_index import RunsIndex
from spoold.spool import DeadLetter, DeadLetterStore, Spool, SpoolLockedError, inspect_spool


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
        _print({"total": store.count(), "items": [_summary(letter) for letter in letters]}, out)
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


def deadletter_replay(spool_dir: Path, ids: list[int] | None, *, out: TextIO = sys.stdout) -> int:
    """Move dead letters back into the spool (in batches), then delete them from the store."""
    try:
        spool = Spool(spool_dir)
    except SpoolLockedError:
        print(
            "spoold: the daemon is running and owns the spool; stop it, then replay",
            file=sys.stderr,
        )
        return 2
    replayed = invalid = 0
    try:
        with DeadLetterStore(spool_dir / DEAD_LETTER_FILE) as store:
            index = RunsIndex(spool_dir / INDEX_FILE)
            try:
                # Repair first (as the daemon's start would): the marks the replay moves
                # must not skip an item the index has not recorded yet.
                reconcile(spool, index)
                for _ in range(100_000):  # bounded: each pass removes what it took
                    letters = store.take_for_replay(ids, limit=500)
                    if not letters:
                        break
                    good = []
                    for letter in letters:
                        try:
                            validate_op(letter.op)
                            good.append(letter)
                        except (ValueError, KeyError):
                            invalid += 1
                    if not good:
                        break
                    ops = [letter.op for letter in good]
                    index.fold_spooled(spool.put_group(ops), ops)  # counted as accepted again
                    store.remove(letter.id for letter in good)
                    replayed += len(good)
                    if ids is not None:
                        break
            finally:
                index.close()
    finally:
        spool.close()
    _print({"replayed": replayed, "left_invalid": invalid}, out)
    return 0


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
