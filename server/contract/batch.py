"""Per-item validation of batch bodies: one bad item never blocks the others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from server.contract.errors import PayloadTooLarge, ValidationFailed
from server.contract.models import BatchItemError
from server.contract.validation import summarize

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ValidatedBatch(Generic[M]):
    valid: list[tuple[int, M]]
    errors: list[BatchItemError]
    total: int


def _event_id_hint(item: Any) -> str | None:
    if isinstance(item, dict):
        value = item.get("event_id")
        if isinstance(value, str):
            return value[:255]
    return None


def validate_batch(
    body: Any, model: type[M], *, max_items: int, context: dict[str, Any] | None = None
) -> ValidatedBatch[M]:
    """Validate each item of a JSON array; the body itself must be an array.

    ``context`` reaches the field validators (``fields.JSON_DEPTH_BUDGET``)."""
    if not isinstance(body, list):
        raise ValidationFailed(
            [
                {
                    "loc": ["body"],
                    "msg": "batch body must be a JSON array of runs",
                    "type": "list_type",
                }
            ]
        )
    if len(body) > max_items:
        raise PayloadTooLarge(f"batch has {len(body)} items; at most {max_items} are accepted")
    valid: list[tuple[int, M]] = []
    errors: list[BatchItemError] = []
    for index, item in enumerate(body):
        if not isinstance(item, dict):
            errors.append(
                BatchItemError(index=index, event_id=None, message="item must be a JSON object")
            )
            continue
        try:
            valid.append((index, model.model_validate(item, context=context)))
        except ValidationError as exc:
            errors.append(
                BatchItemError(index=index, event_id=_event_id_hint(item), message=summarize(exc))
            )
    return ValidatedBatch(valid, errors, len(body))
