"""Coalescing spooled operations (``spoold.spool.operations``) into upsert items.

The drainer folds the operations of one run, in FIFO order, into one ``UpsertItem``
snapshot for the server.

Every snapshot carries ``seen_at``: the newest folded operation's ``accepted_at`` (the
agent's time, so the server judges staleness on it, not on when the sidecar could
deliver). Heartbeats fold as follows: their ``progress`` merge patches are composed
into ``metrics_patch`` (applied by the server after ``create``/``update``); an update
that sets ``metrics_json`` drops the pending patch (it replaces the whole object); a
heartbeat after such an update is folded into that ``metrics_json``; a heartbeat after
a terminal status changes nothing (a late "alive" never revives a run, as the server's
own endpoint answers it); a snapshot of heartbeats only is a ``heartbeat: true`` item.
Two patches no merge patch can compose (``server.contract.mergepatch``) are not folded into one
snapshot: ``coalesce`` starts another snapshot of the run, sent after the first.

A snapshot read from the spool also carries where and in what order it was made
(``Origin``): ``source`` (the sidecar's id and its spool file's, so a replaced spool is
another source) and ``sequence``, its newest operation's place in the spool (the queue
item's AUTOINCREMENT id, which never goes back after deletes and vacuums, times
``OPS_PER_GROUP``, plus the operation's index in its group). The server keeps the pair of
the last snapshot it applied to a run and skips an older one from the same source: a
batch one replica commits late, after its re-sent copy and newer snapshots went to
another, never regresses the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.contract import mergepatch
from server.contract.fields import SQLITE_INT_MAX, TERMINAL_STATUSES

#: Sequences per spool group: an operation's is ``group id * OPS_PER_GROUP + index``
#: (indexes past it share the last one: equal sequences are applied, never skipped).
OPS_PER_GROUP = 1 << 24


def op_sequence(group_id: int, index: int) -> int:
    """The sequence of the ``index``-th operation of spool group ``group_id``."""
    return min(group_id * OPS_PER_GROUP + min(index, OPS_PER_GROUP - 1), SQLITE_INT_MAX)


#: The longest source spoold sends: a sidecar id (at most 64 characters,
#: ``spoold.identity``), "/", a spool file id (a uuid4 in hex, ``Spool.identity``).
SOURCE_MAX_LEN = 64 + 1 + 32


@dataclass(frozen=True)
class Origin:
    """Where a round's snapshots were made: the source, and each operation's sequence
    by its position in the round."""

    source: str
    sequences: Sequence[int]

    def at(self, position: int) -> int | None:
        return self.sequences[position] if 0 <= position < len(self.sequences) else None


#: The widest origin a snapshot can carry (its source and sequence at their longest):
#: the door check (``spoold.forward.limits``) judges an operation with it, so whatever
#: the drainer stamps on the operation later still fits the server's cap.
WIDEST_ORIGIN = Origin("x" * SOURCE_MAX_LEN, [SQLITE_INT_MAX])


@dataclass
class Snapshot:
    """Everything spooled for one run, folded in order; ``positions`` are the folded
    operations' places in the round, so a refusal names exactly the operations it is about."""

    event_id: str
    create: dict[str, Any] | None = None
    update: dict[str, Any] = field(default_factory=dict)
    positions: list[int] = field(default_factory=list)
    #: The newest folded operation's accepted_at (canonical instants sort as strings).
    seen_at: str | None = None
    #: Folded heartbeats' progress, for the server to merge after create/update.
    metrics_patch: dict[str, Any] | None = None
    #: The round's source, and the newest folded operation's sequence (``Origin``).
    source: str | None = None
    sequence: int | None = None

    @property
    def operations(self) -> int:
        return len(self.positions)

    def absorbs(self, op: dict[str, Any]) -> bool:
        """Whether ``op`` folds into this snapshot; if not, it starts the run's next one.

        Not: a heartbeat whose patch cannot be composed with the pending one, and an
        update that ends the run while a patch is pending (the patch goes first, while
        the run still runs: a finished run is never changed by a late "alive")."""
        if self.metrics_patch is not None and op["kind"] in ("update", "commit"):
            body = op["body"]
            ends = body.get("status") in TERMINAL_STATUSES and "metrics_json" not in body
            return not ends or self._status() in TERMINAL_STATUSES
        progress = op["body"].get("progress") if op["kind"] == "heartbeat" else None
        if not progress or self.metrics_patch is None:
            return True
        if "metrics_json" in self.update or self._status() in TERMINAL_STATUSES:
            return True
        return mergepatch.compose(self.metrics_patch, progress) is not None

    def fold(self, op: dict[str, Any], position: int = 0, origin: Origin | None = None) -> None:
        self.positions.append(position)
        if origin is not None:
            sequence = origin.at(position)
            if sequence is not None and (self.sequence is None or sequence > self.sequence):
                self.source, self.sequence = origin.source, sequence
        accepted_at = op.get("accepted_at")
        if isinstance(accepted_at, str) and (self.seen_at is None or accepted_at > self.seen_at):
            self.seen_at = accepted_at
        if op["kind"] == "create":
            if self.create is None:
                self.create = dict(op["body"])
            return
        if op["kind"] == "heartbeat":
            self._beat(op["body"].get("progress"))
            return
        body = op["body"]
        if body.get("status") == "running" and self._status() in TERMINAL_STATUSES:
            body = {key: value for key, value in body.items() if key != "status"}
        if "metrics_json" in body:  # replaces the whole object: earlier patches are moot
            self.metrics_patch = None
        self.update.update(body)

    def _beat(self, progress: dict[str, Any] | None) -> None:
        if not progress or self._status() in TERMINAL_STATUSES:
            return  # alive, nothing to merge; or a late "alive" that changes nothing
        if "metrics_json" in self.update:
            self.update["metrics_json"] = mergepatch.apply(
                self.update["metrics_json"] or {}, progress
            )
            return
        if self.metrics_patch is None:
            self.metrics_patch = dict(progress)
            return
        composed = mergepatch.compose(self.metrics_patch, progress)
        if composed is None:  # absorbs() said no: coalesce never folds it here
            raise ValueError("heartbeat progress cannot be composed with the pending patch")
        self.metrics_patch = composed

    def _status(self) -> str | None:
        """The status this snapshot already carries (a later update wins over the create)."""
        if "status" in self.update:
            return str(self.update["status"])
        return None if self.create is None else self.create.get("status")

    def upsert_item(self) -> dict[str, Any]:
        """The JSON of an UpsertItem for the server's ``mode=upsert`` batch."""
        item: dict[str, Any] = {"event_id": self.event_id}
        if self.create is not None:
            item["create"] = self.create
        if self.update:
            item["update"] = self.update
        if self.metrics_patch is not None:
            item["metrics_patch"] = self.metrics_patch
        if self.create is None and not self.update:
            item["heartbeat"] = True  # heartbeats only: "alive" (and maybe progress)
        if self.seen_at is not None:
            item["seen_at"] = self.seen_at
        if self.source is not None and self.sequence is not None:
            item["source"] = self.source
            item["sequence"] = self.sequence
        return item


def coalesce(ops: Iterable[dict[str, Any]], origin: Origin | None = None) -> list[Snapshot]:
    """Fold operations per run, keeping the order in which runs first appear.

    A run whose heartbeats' patches cannot be composed gets a further snapshot, after
    its first (the server applies a batch's items in order)."""
    snapshots: list[Snapshot] = []
    current: dict[str, Snapshot] = {}
    for position, op in enumerate(ops):
        event_id = op["event_id"]
        snapshot = current.get(event_id)
        if snapshot is None or not snapshot.absorbs(op):
            snapshot = current[event_id] = Snapshot(event_id)
            snapshots.append(snapshot)
        snapshot.fold(op, position, origin)
    return snapshots


def lone(op: dict[str, Any], position: int = 0, origin: Origin | None = None) -> Snapshot:
    """One operation as a snapshot of its own."""
    snapshot = Snapshot(op["event_id"])
    snapshot.fold(op, position, origin)
    return snapshot


def expand(
    snapshot: Snapshot, ops: Sequence[dict[str, Any]], origin: Origin | None = None
) -> list[Snapshot]:
    """A snapshot's operations as snapshots of their own, in the order they were accepted
    (the create first, each update after the ones before it)."""
    return [lone(ops[position], position, origin) for position in snapshot.positions]


def encode_batch(snapshots: Iterable[Snapshot]) -> bytes:
    """The body of a ``mode=upsert`` batch request for these snapshots."""
    return orjson.dumps([snapshot.upsert_item() for snapshot in snapshots])


def pack(
    snapshots: Iterable[Snapshot],
    ops: Sequence[dict[str, Any]],
    max_bytes: int,
    origin: Origin | None = None,
) -> list[tuple[list[Snapshot], bytes]]:
    """Batches of at most ``max_bytes`` each (the server's body cap), in order, with
    their encoded bodies. A snapshot too large alone goes as its separate operations;
    an operation too large alone (accepted under an older, larger cap) goes alone, and
    the server's 413 for it dead-letters just that operation."""
    batches: list[tuple[list[Snapshot], bytes]] = []
    members: list[Snapshot] = []
    parts: list[bytes] = []
    size = 2  # the brackets

    def close() -> None:
        nonlocal size
        if members:
            batches.append((list(members), b"[" + b",".join(parts) + b"]"))
            members.clear()
            parts.clear()
            size = 2

    for snapshot in snapshots:
        encoded = orjson.dumps(snapshot.upsert_item())
        pieces = [(snapshot, encoded)]
        if snapshot.operations > 1 and len(encoded) + 2 > max_bytes:
            pieces = [
                (one, orjson.dumps(one.upsert_item())) for one in expand(snapshot, ops, origin)
            ]
        for member, part in pieces:
            extra = len(part) + (1 if members else 0)
            if members and size + extra > max_bytes:
                close()
                extra = len(part)
            members.append(member)
            parts.append(part)
            size += extra
    close()
    return batches
