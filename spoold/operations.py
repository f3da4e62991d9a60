"""The operations spoold accepts and spools, and their coalescing into upsert items.

An operation is a small JSON object: ``{"kind", "event_id", "body", "accepted_at"}``
where kind is ``create``, ``update`` or ``commit`` and body is already validated
and normalised by the shared contract models. The drainer folds the operations
of one run, in FIFO order, into one ``UpsertItem`` snapshot for the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from server.contract.fields import TERMINAL_STATUSES
from server.contract.models import CommitAssociation, RunCreate, RunUpdate

Kind = Literal["create", "update", "commit"]


#: Free-form JSON fields, shared with the model rather than copied by model_dump: a copy
#: would double the memory of a large body (its Python objects cost many times its bytes).
_SHARED_FIELDS = frozenset({"metrics_json", "context_json"})


def create_op(run: RunCreate, accepted_at: str) -> dict[str, Any]:
    body = run.model_dump(exclude_none=True, exclude=set(_SHARED_FIELDS))
    for name in sorted(_SHARED_FIELDS):
        if getattr(run, name) is not None:
            body[name] = getattr(run, name)
    body["created_at"] = run.created_at or accepted_at
    return {"kind": "create", "event_id": run.event_id, "body": body, "accepted_at": accepted_at}


def update_op(event_id: str, changes: dict[str, Any], accepted_at: str) -> dict[str, Any]:
    return {"kind": "update", "event_id": event_id, "body": changes, "accepted_at": accepted_at}


def commit_op(event_id: str, association: CommitAssociation, accepted_at: str) -> dict[str, Any]:
    return {
        "kind": "commit",
        "event_id": event_id,
        "body": association.changes(),
        "accepted_at": accepted_at,
    }


@dataclass
class Snapshot:
    """Everything spooled for one run, folded in order; ``positions`` are the folded
    operations' places in the round, so a refusal names exactly the operations it is about."""

    event_id: str
    create: dict[str, Any] | None = None
    update: dict[str, Any] = field(default_factory=dict)
    positions: list[int] = field(default_factory=list)

    @property
    def operations(self) -> int:
        return len(self.positions)

    def fold(self, op: dict[str, Any], position: int = 0) -> None:
        self.positions.append(position)
        if op["kind"] == "create":
            if self.create is None:
                self.create = dict(op["body"])
            return
        body = op["body"]
        if body.get("status") == "running" and self._status() in TERMINAL_STATUSES:
            body = {key: value for key, value in body.items() if key != "status"}
        self.update.update(body)

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
        return item


def coalesce(ops: Iterable[dict[str, Any]]) -> list[Snapshot]:
    """Fold operations per run, keeping the order in which runs first appear."""
    snapshots: dict[str, Snapshot] = {}
    for position, op in enumerate(ops):
        event_id = op["event_id"]
        snapshot = snapshots.get(event_id)
        if snapshot is None:
            snapshot = snapshots[event_id] = Snapshot(event_id)
        snapshot.fold(op, position)
    return list(snapshots.values())


def lone(op: dict[str, Any], position: int = 0) -> Snapshot:
    """One operation as a snapshot of its own."""
    snapshot = Snapshot(op["event_id"])
    snapshot.fold(op, position)
    return snapshot


def expand(snapshot: Snapshot, ops: Sequence[dict[str, Any]]) -> list[Snapshot]:
    """A snapshot's operations as snapshots of their own, in the order they were accepted
    (the create first, each update after the ones before it)."""
    return [lone(ops[position], position) for position in snapshot.positions]


def validate_op(op: dict[str, Any]) -> None:
    """Re-validate a spooled operation (e.g. one replayed from the dead-letter store)."""
    kind = op.get("kind")
    if kind == "create":
        RunCreate.model_validate(op["body"])
    elif kind in ("update", "commit"):
        RunUpdate.model_validate(op["body"])
    else:
        raise ValueError(f"unknown operation kind {kind!r}")


def encode_batch(snapshots: Iterable[Snapshot]) -> bytes:
    """The body of a ``mode=upsert`` batch request for these snapshots."""
    return orjson.dumps([snapshot.upsert_item() for snapshot in snapshots])


def pack(
    snapshots: Iterable[Snapshot], ops: Sequence[dict[str, Any]], max_bytes: int
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
            pieces = [(one, orjson.dumps(one.upsert_item())) for one in expand(snapshot, ops)]
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
