"""Timestamp normalisation: every instant is stored in one canonical form.

The canonical form is UTC, microsecond precision, fixed width
(``2026-01-12T10:30:00.000000+00:00``), so that comparing two stored strings
lexically is the same as comparing the instants. ``Z``, ``+00:00`` and
``+05:30`` spellings of one instant all normalise to the same string.
"""

from __future__ import annotations

from datetime import UTC, datetime

_MAX_LEN = 64


class TimestampError(ValueError):
    """A timestamp that is not an ISO 8601 instant with a timezone."""


def parse_instant(value: str) -> datetime:
    """Parse an ISO 8601 string that carries a timezone into an aware UTC datetime."""
    if not isinstance(value, str):
        raise TimestampError("must be an ISO 8601 string with a timezone")
    text = value.strip()
    if not text or len(text) > _MAX_LEN:
        raise TimestampError("must be an ISO 8601 string with a timezone")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TimestampError("not an ISO 8601 timestamp with a timezone") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise TimestampError(
            "timestamp must include a timezone, e.g. 2026-01-12T10:30:00Z or +00:00"
        )
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:
        raise TimestampError("timestamp out of range") from exc


def format_instant(moment: datetime) -> str:
    """Format an aware datetime in the canonical, lexically sortable form."""
    if moment.tzinfo is None:
        raise TimestampError("naive datetime cannot be formatted as an instant")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def normalize_timestamp(value: str) -> str:
    """Return the canonical string for an ISO 8601 instant; raise TimestampError otherwise."""
    return format_instant(parse_instant(value))


def utc_now() -> str:
    """The current instant in canonical form."""
    return format_instant(datetime.now(UTC))
