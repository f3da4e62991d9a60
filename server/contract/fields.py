"""Field types shared by every request model: identifiers, instants, statuses, counters."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, StrictStr

from server.contract.timestamps import TimestampError, normalize_timestamp

CANONICAL_STATUSES: tuple[str, ...] = (
    "running",
    "success",
    "failure",
    "partial",
    "timeout",
    "cancelled",
)
TERMINAL_STATUSES: frozenset[str] = frozenset(CANONICAL_STATUSES) - {"running"}
STATUS_ALIASES: dict[str, str] = {
    "failed": "failure",
    "completed": "success",
    "succeeded": "success",
}
COMMIT_SOURCES: tuple[str, ...] = ("manual", "llm", "ci")
SQLITE_INT_MAX = 2**63 - 1
IDENTIFIER_MAX_LEN = 255

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COMMIT_HASH = re.compile(r"[0-9a-fA-F]{7,40}")


def _identifier(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    if "/" in value:
        raise ValueError("must not contain '/'")
    if _CONTROL.search(value) or not value.isprintable():
        raise ValueError("must not contain control or invisible characters")
    return value


def _instant(value: str) -> str:
    try:
        return normalize_timestamp(value)
    except TimestampError as exc:
        raise ValueError(str(exc)) from exc


def _status_message() -> str:
    return f"Status must be one of: {', '.join(CANONICAL_STATUSES)}"


def canonical_status(value: str) -> str:
    """Accept only canonical statuses (PATCH)."""
    if value not in CANONICAL_STATUSES:
        raise ValueError(_status_message())
    return value


def normalize_status(value: str) -> str:
    """Accept canonical statuses and the guide's aliases (POST, batch, filters)."""
    value = STATUS_ALIASES.get(value, value)
    if value not in CANONICAL_STATUSES:
        raise ValueError(
            _status_message() + f" (aliases accepted here: {', '.join(STATUS_ALIASES)})"
        )
    return value


def _commit_hash(value: str) -> str:
    if not _COMMIT_HASH.fullmatch(value):
        raise ValueError("commit hash must be 7-40 hexadecimal characters")
    return value.lower()


def _null_to_zero(value: Any) -> Any:
    return 0 if value is None else value


Identifier = Annotated[
    StrictStr,
    Field(min_length=1, max_length=IDENTIFIER_MAX_LEN),
    AfterValidator(_identifier),
]
Instant = Annotated[StrictStr, AfterValidator(_instant)]
CanonicalStatus = Annotated[StrictStr, AfterValidator(canonical_status)]
AnyStatus = Annotated[StrictStr, AfterValidator(normalize_status)]
CommitHash = Annotated[StrictStr, AfterValidator(_commit_hash)]
CommitSource = Literal["manual", "llm", "ci"]
Counter = Annotated[int, Field(strict=True, ge=0, le=SQLITE_INT_MAX)]
CounterDefaultZero = Annotated[Counter, BeforeValidator(_null_to_zero)]
JsonObject = dict[str, Any]
