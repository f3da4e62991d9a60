"""The operations spoold accepts and spools.

An operation is a small JSON object: ``{"kind", "event_id", "body", "accepted_at"}``
where kind is ``create``, ``update``, ``commit`` or ``heartbeat`` and body is already
validated and normalised by the shared contract models. The HTTP handlers build them,
the accept thread spools them, the drainer folds them (``spoold.forward.coalesce``).
"""

from __future__ import annotations

from typing import Any

from server.contract.models import CommitAssociation, HeartbeatBody, RunCreate, RunUpdate

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


def heartbeat_op(event_id: str, beat: HeartbeatBody, accepted_at: str) -> dict[str, Any]:
    body = {} if beat.progress is None else {"progress": beat.progress}
    return {"kind": "heartbeat", "event_id": event_id, "body": body, "accepted_at": accepted_at}


def validate_op(op: dict[str, Any]) -> None:
    """Re-validate a spooled operation (e.g. one replayed from the dead-letter store)."""
    kind = op.get("kind")
    if kind == "create":
        RunCreate.model_validate(op["body"])
    elif kind in ("update", "commit"):
        RunUpdate.model_validate(op["body"])
    elif kind == "heartbeat":
        HeartbeatBody.model_validate(op["body"])
    else:
        raise ValueError(f"unknown operation kind {kind!r}")
