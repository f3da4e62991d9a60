"""What a PATCH body changes, decided once for both daemons so they answer alike.

Clients send back what they read: the reference client's ``end_run`` adds
``updated_at``, others echo a whole run. Fields the server maintains are
accepted and dropped (``RunUpdate.ECHOED``); ``event_id`` must equal the path's
(a different one would be a rename, refused with 422); a ``run_id`` equal to the
stored one is dropped too. What is left is applied, in the client's order; if
nothing is left the PATCH is a 422 "no fields to update", as an empty body is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.contract.errors import ValidationFailed
from server.contract.models import RunUpdate
from server.contract.validation import parse_model


def patch_changes(
    body: Any, event_id: str, *, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The fields a PATCH of event_id sets, validated, in the order the client sent them."""
    update = parse_model(RunUpdate, body, context=context)
    if update.event_id is not None and update.event_id != event_id:
        raise ValidationFailed(
            [
                {
                    "loc": ["body", "event_id"],
                    "msg": "event_id in the body must equal the event_id in the path "
                    "(a run's event_id never changes); omit it or send the same value",
                    "type": "value_error",
                }
            ]
        )
    given = update.changes()
    changes = {key: given[key] for key in body if key in given}
    if not changes:
        raise nothing_to_update(key for key in body if key not in given)
    return changes


def without_unchanged_run_id(changes: dict[str, Any], stored_run_id: str | None) -> dict[str, Any]:
    """changes without a run_id equal to the stored one (it is an echo, not an update)."""
    if "run_id" not in changes or changes["run_id"] != stored_run_id:
        return changes
    left = {key: value for key, value in changes.items() if key != "run_id"}
    if not left:
        raise nothing_to_update(["run_id"])
    return left


def nothing_to_update(ignored: Iterable[str] = ()) -> ValidationFailed:
    names = list(ignored)
    message = "no fields to update"
    if names:
        message += (
            f" ({', '.join(names)}: maintained by the server or equal to the stored value,"
            " so ignored)"
        )
    return ValidationFailed([{"loc": ["body"], "msg": message, "type": "missing"}])
