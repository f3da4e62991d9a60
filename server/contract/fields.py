"""Field types shared by every request model: identifiers, instants, statuses, counters."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BeforeValidator, Field, StrictStr, ValidationInfo

from server.contract.codec import DEFAULT_MAX_DEPTH, nesting_depth
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
SQLITE_INT_MAX = 2**63 - 1
IDENTIFIER_MAX_LEN = 255
COMMIT_HASH_MIN_LEN, COMMIT_HASH_MAX_LEN = 7, 40
GIT_COMMIT_HASH_MAX_LEN = 255
#: Validation-context key: how many nesting levels a JSON field given as JSON text may
#: hold, so decoded text obeys the same depth limit as the same object sent inline.
JSON_DEPTH_BUDGET = "json_depth_budget"

#: C0 and C1 controls, DEL, and the two Unicode line/paragraph separators: they break
#: logs, terminals and line-based tools. Everything else a person can type is a name.
_NAME_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: A revision is one visible token: no whitespace of any kind, no controls.
_REVISION_BREAKERS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_HEX = re.compile(r"[0-9a-fA-F]+")


def _is_blank(value: str) -> bool:
    """Nothing to show: only whitespace and invisible format characters (ZWSP, ZWJ, BOM …)."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in value)


def identifier_problem(value: str) -> str | None:
    """Why value cannot name a run, an agent or a job; None if it can.

    Liberal on purpose: emoji sequences, no-break spaces, combining marks and bidi
    text are ordinary names. Shared by body validation and path lookups, so every
    event_id a POST accepts can be read and patched back through its URL.
    """
    if _is_blank(value):
        return "must not be empty or blank"
    if len(value) > IDENTIFIER_MAX_LEN:
        return f"must be at most {IDENTIFIER_MAX_LEN} characters"
    if "/" in value:
        return "must not contain '/'"
    found = _NAME_BREAKERS.search(value)
    if found is not None:
        return f"must not contain control or line-separator characters (U+{ord(found[0]):04X})"
    return None


def _identifier(value: str) -> str:
    problem = identifier_problem(value)
    if problem is not None:
        raise ValueError(problem)
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


def _revision(value: str) -> str:
    """A commit hash of any VCS: hexadecimal ones lower case (git prints them so), others as sent."""
    found = _REVISION_BREAKERS.search(value)
    if found is not None:
        raise ValueError(
            f"commit hash must not contain whitespace or control characters (U+{ord(found[0]):04X})"
        )
    return value.lower() if _HEX.fullmatch(value) else value


def _json_object(value: Any, info: ValidationInfo) -> Any:
    """Decode JSON text holding an object (the reference client keeps metrics_json as a str).

    Any other text is refused, and the decoded object gets the depth budget the caller
    gives in the validation context: nesting hidden in a string is still nesting.
    """
    if not isinstance(value, str):
        return value
    budget = (info.context or {}).get(JSON_DEPTH_BUDGET, DEFAULT_MAX_DEPTH - 1)
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(
            f"a string here must hold a JSON object; it is not valid JSON ({exc})"
        ) from exc
    if not isinstance(decoded, dict):
        raise ValueError(
            f"a string here must hold a JSON object, not a JSON {type(decoded).__name__}"
        )
    if nesting_depth(decoded, limit=budget) > budget:
        raise ValueError(f"the JSON object in this string is nested deeper than {budget} levels")
    return decoded


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
CommitHash = Annotated[
    StrictStr,
    Field(min_length=COMMIT_HASH_MIN_LEN, max_length=COMMIT_HASH_MAX_LEN),
    AfterValidator(_revision),
]
"""associate-commit's hash, as the guide says: 7-40 characters (of any VCS)."""
GitCommitHash = Annotated[
    StrictStr, Field(min_length=1, max_length=GIT_COMMIT_HASH_MAX_LEN), AfterValidator(_revision)
]
"""A run's git_commit_hash: any revision up to 255 characters; descriptive, so liberal."""
CommitSource = Literal["manual", "llm", "ci"]
Counter = Annotated[int, Field(strict=True, ge=0, le=SQLITE_INT_MAX)]
CounterDefaultZero = Annotated[Counter, BeforeValidator(_null_to_zero)]
#: The longest allowance a run may name for itself: 30 days.
HEARTBEAT_TIMEOUT_MAX_S = 2_592_000
#: Where an upsert snapshot was made (``UpsertItem.source``): an opaque id a client keeps
#: stable for as long as its ``sequence`` keeps growing (spoold: sidecar id / spool file id).
SNAPSHOT_SOURCE_PATTERN = r"^[A-Za-z0-9._:/-]{1,128}$"
SnapshotSource = Annotated[StrictStr, Field(pattern=SNAPSHOT_SOURCE_PATTERN)]
#: An upsert snapshot's place in its source's order (``UpsertItem.sequence``).
SnapshotSequence = Annotated[int, Field(strict=True, ge=0, le=SQLITE_INT_MAX)]
HeartbeatTimeout = Annotated[int, Field(strict=True, ge=1, le=HEARTBEAT_TIMEOUT_MAX_S)]
"""Seconds without a write after which a running run is stale (its own allowance)."""
JsonObject = Annotated[
    dict[str, Any], BeforeValidator(_json_object, json_schema_input_type=dict[str, Any] | str)
]
