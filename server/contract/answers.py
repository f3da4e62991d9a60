"""The bodies of the write answers, built once for both daemons.

The sidecar answers a write as the server would (an agent cannot tell which one it
talks to), so both build these bodies here: the same keys, in the same order, the
same messages. The HTTP status stays with each handler (the sidecar's 202 for a
write queued while the server is unreachable).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.contract.models import BatchItemError, DuplicateResponse

#: The duplicate create's message (the documented default of ``DuplicateResponse``).
DUPLICATE_MESSAGE: str = DuplicateResponse.model_fields["message"].default


def created(event_id: str, run_id: str) -> dict[str, Any]:
    """A create that stored a new run (201)."""
    return {"status": "created", "event_id": event_id, "run_id": run_id}


def duplicate(event_id: str) -> dict[str, Any]:
    """A create of an event_id already stored: idempotent, also 201."""
    return {"status": "duplicate", "event_id": event_id, "message": DUPLICATE_MESSAGE}


def updated(event_id: str, fields: Iterable[str]) -> dict[str, Any]:
    """A PATCH applied: the fields it changed, in the order the request gave them."""
    return {"event_id": event_id, "updated": True, "fields_updated": list(fields)}


def associated(event_id: str, run_id: str | None, commit_hash: str) -> dict[str, Any]:
    """A commit associated with a run."""
    return {"status": "success", "event_id": event_id, "run_id": run_id, "commit_hash": commit_hash}


def batch_inserted(
    inserted: int, valid: int, errors: Iterable[BatchItemError], total: int
) -> dict[str, Any]:
    """An insert batch: ``valid`` items were accepted, of which ``inserted`` were new."""
    return {
        "inserted": inserted,
        "duplicates": valid - inserted,
        "errors": [error.model_dump() for error in errors],
        "total": total,
    }
