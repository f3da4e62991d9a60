"""Turning pydantic's errors into the API's 422 bodies and per-item messages."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from server.contract.errors import ValidationFailed

M = TypeVar("M", bound=BaseModel)

_MAX_ERRORS = 20


def _clean_message(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def error_entries(exc: ValidationError, location: str) -> list[dict[str, Any]]:
    """FastAPI-shaped ``{loc, msg, type}`` entries, never echoing the input."""
    entries = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[
        :_MAX_ERRORS
    ]:
        entries.append(
            {
                "loc": [location, *error["loc"]],
                "msg": _clean_message(error["msg"]),
                "type": error["type"],
            }
        )
    return entries


def summarize(exc: ValidationError) -> str:
    """One line naming each bad field, for per-item batch errors."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[
        :_MAX_ERRORS
    ]:
        where = ".".join(str(part) for part in error["loc"])
        message = _clean_message(error["msg"])
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_model(
    model: type[M], data: Any, *, location: str = "body", context: dict[str, Any] | None = None
) -> M:
    """Validate data against model or raise a 422 that names the fields.

    ``context`` reaches the field validators (``fields.JSON_DEPTH_BUDGET``)."""
    if location == "body" and not isinstance(data, dict):
        raise ValidationFailed(
            [{"loc": [location], "msg": "request body must be a JSON object", "type": "dict_type"}]
        )
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ValidationFailed(error_entries(exc, location)) from exc
