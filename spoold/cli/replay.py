"""Replaying dead letters: back into the spool, page after page, never going back in time.

A dead letter is an old operation. Between its refusal and its replay, newer
operations of the same run may have been accepted (and delivered, or still be
queued). Replayed as it is, ``{"status": "running", "items_succeeded": 1}``
would overwrite the ``success`` / ``3`` those newer operations set. So each
replayed update keeps only the fields whose value is still the run's latest
accepted state, which the runs index holds (every accepted operation folded in
accept order, the dead letter included): a field a newer operation changed is
dropped, and a letter left with no field is *superseded* and removed. What is
replayed can then never move the run back, in whatever order it is applied
relative to newer queued operations; it goes through the spool like any write.
A create is always replayed: the server only inserts it if the run is missing.

A run the index no longer knows (pruned after ``SPOOLD_INDEX_RETENTION_S`` or
past ``SPOOLD_INDEX_MAX_MB``) cannot be checked: its letters are kept unless
``force`` says to replay them as they are. Nor can a letter whose fields a
shrunk snapshot lacks (a run with dead letters keeps its whole snapshot, so
that is a run shrunk by an index upgrade); one whose fields it holds can, since
the letter was folded in after the shrink. Letters that no longer validate are kept, counted, and skipped;
the walk goes on past them (by id), so every page is replayed. So are letters
the server would refuse again (``limits``: the daemon's door checks, the body
cap and nesting depth once wrapped in the batch envelope): replayed, they could
only be dead-lettered again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.contract.errors import ApiError
from spoold.forward.limits import UpstreamLimits
from spoold.spool import DeadLetter, DeadLetterStore, Spool
from spoold.spool.operations import validate_op
from spoold.state.known import heartbeat_checkable, heartbeat_still_current
from spoold.state.recovery import reconcile
from spoold.state.runs_index import KnownRun, RunsIndex
from spoold.state.storage import DEAD_LETTER_FILE, INDEX_FILE

PAGE = 500


@dataclass
class ReplayReport:
    replayed: int = 0  # letters put back in the spool
    superseded: int = 0  # letters whose every field a newer operation changed: removed
    fields_dropped: int = 0  # fields left out because a newer operation changed them
    left_invalid: int = 0  # kept: they no longer validate
    left_unverified: int = 0  # kept: run unknown to the index (use force)
    left_refused: int = 0  # kept: the server would refuse it again (size, depth)
    not_found: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (
            self.left_invalid or self.left_unverified or self.left_refused or self.not_found
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "superseded": self.superseded,
            "fields_dropped": self.fields_dropped,
            "left_invalid": self.left_invalid,
            "left_unverified": self.left_unverified,
            "left_refused": self.left_refused,
            "not_found": self.not_found,
        }


def still_current(op: dict[str, Any], latest: dict[str, Any]) -> dict[str, Any] | None:
    """The part of ``op`` that agrees with the run's latest accepted state; None if nothing.

    Fields the latest state does not mention are kept (nothing newer set them).
    """
    if op.get("kind") == "create":
        return op
    if op.get("kind") == "heartbeat":
        return heartbeat_still_current(op, latest)
    body = op["body"]
    kept = {key: value for key, value in body.items() if key not in latest or latest[key] == value}
    if not kept:
        return None
    return op if len(kept) == len(body) else {**op, "body": kept}


def latest_to_check(op: dict[str, Any], known: KnownRun) -> dict[str, Any] | None:
    """The run's latest accepted state to check ``op`` against; None if the index cannot
    say (a shrunk snapshot that lacks some of the letter's fields: unverified)."""
    if op.get("kind") == "heartbeat":
        return known.snapshot if heartbeat_checkable(op, known.snapshot) else None
    if known.complete or set(op.get("body", {})) <= set(known.snapshot):
        return known.snapshot
    return None


def _pages(store: DeadLetterStore, ids: list[int] | None) -> Iterator[list[DeadLetter]]:
    """Every requested letter, a page at a time, in id order; invalid ones do not stop it."""
    if ids is not None:
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), PAGE):
            yield store.take_for_replay(wanted[start : start + PAGE])
        return
    after = 0
    for _ in range(10_000_000):  # bounded: the cursor moves forward every page
        page = store.take_for_replay(after_id=after, limit=PAGE)
        if not page:
            return
        yield page
        after = page[-1].id


def replay(
    spool: Spool,
    store: DeadLetterStore,
    index: RunsIndex,
    ids: list[int] | None,
    *,
    force: bool,
    limits: UpstreamLimits | None = None,
) -> ReplayReport:
    """Move dead letters back into the spool (the daemon stopped: the caller holds the spool)."""
    report = ReplayReport()
    # Repair first (as the daemon's start would): the marks the replay moves must not
    # skip an item the index has not recorded yet.
    reconcile(spool, index)
    seen: set[int] = set()
    for page in _pages(store, ids):
        seen.update(letter.id for letter in page)
        replayed, done = [], []
        for letter in sorted(
            page, key=lambda letter: (letter.op.get("accepted_at", ""), letter.id)
        ):
            try:
                validate_op(letter.op)
                event_id = letter.op["event_id"]
                if not isinstance(event_id, str):
                    raise TypeError("event_id")
            except (ValueError, KeyError, TypeError):
                report.left_invalid += 1
                continue
            latest = None
            if letter.op["kind"] != "create":  # a create never overwrites: no check needed
                known = index.get(event_id)
                latest = None if known is None else latest_to_check(letter.op, known)
                if latest is None and not force:
                    report.left_unverified += 1
                    continue
            op = letter.op if latest is None else still_current(letter.op, latest)
            if op is not None and limits is not None and not _fits(limits, op):
                report.left_refused += 1
                continue
            done.append(letter.id)
            if op is None:
                report.superseded += 1
                report.fields_dropped += len(letter.op.get("body", {}))
                continue
            report.fields_dropped += len(letter.op.get("body", {})) - len(op.get("body", {}))
            replayed.append(op)
        if replayed:
            index.fold_spooled(spool.put_group(replayed), replayed)  # accepted again
        if done:
            store.remove(done)  # only once the spool and the index have them
        report.replayed += len(replayed)
    if ids is not None:
        report.not_found = sorted(set(ids) - seen)
    return report


def _fits(limits: UpstreamLimits, op: dict[str, Any]) -> bool:
    """Whether the server would take ``op`` alone in a batch (the daemon's door check)."""
    try:
        limits.check(op)
    except ApiError:
        return False
    return True


def open_and_replay(
    spool_dir: Path,
    ids: list[int] | None,
    *,
    force: bool,
    limits: UpstreamLimits | None = None,
) -> ReplayReport:
    """Open the spool (its lock: the daemon must be stopped), the store and the index; replay."""
    spool = Spool(spool_dir)
    try:
        with DeadLetterStore(spool_dir / DEAD_LETTER_FILE) as store:
            index = RunsIndex(spool_dir / INDEX_FILE)
            try:
                return replay(spool, store, index, ids, force=force, limits=limits)
            finally:
                index.close()
    finally:
        spool.close()
