"""How the dashboard writes numbers, instants and links (Jinja filters; pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

#: Status -> the shape drawn beside its name (status is never told by colour alone).
STATUS_SHAPES: dict[str, str] = {
    "success": "✓",
    "failure": "✗",
    "timeout": "◷",
    "partial": "◐",
    "cancelled": "⊘",
    "running": "▶",
}


def duration(ms: Any) -> str:
    """A duration in ms as a person reads it: 450 ms, 12.3 s, 4 min 05 s, 2 h 10 min."""
    if ms is None or not isinstance(ms, int | float):
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def span(delta: timedelta) -> str:
    """A length of time, coarsely: 45 s, 12 min, 5 h 20 min, 3 d 4 h."""
    return duration(delta.total_seconds() * 1000).replace(".0 s", " s")


def when(instant: Any) -> str:
    """A stored instant as ``2026-06-01 13:04:05 UTC`` (no fraction); other text as is."""
    if isinstance(instant, datetime):
        moment = instant.astimezone(UTC) if instant.tzinfo is not None else instant
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if not isinstance(instant, str) or not instant:
        return "—"
    try:
        moment = datetime.fromisoformat(instant)
    except ValueError:
        return instant
    if moment.tzinfo is None:
        return instant
    try:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        return instant


def ago(instant: Any, now: datetime) -> str:
    """How long before ``now`` an instant was: ``3 h 12 min ago``, ``in 5 min``."""
    if not isinstance(instant, str) or not instant:
        return ""
    try:
        moment = datetime.fromisoformat(instant)
    except ValueError:
        return ""
    if moment.tzinfo is None:
        return ""
    delta = now - moment
    if delta < timedelta(0):
        return f"in {span(-delta)}"
    if delta < timedelta(seconds=5):
        return "just now"
    return f"{span(delta)} ago"


def percent(rate: Any) -> str:
    if rate is None or not isinstance(rate, int | float):
        return "—"
    return f"{rate * 100:.1f}%"


def number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def segment(value: Any) -> str:
    """One URL path segment, whatever the value holds (``/``, ``?``, ``%``, spaces)."""
    return quote(str(value), safe="")


def query(params: dict[str, Any]) -> str:
    """A query string of the parameters that have a value (``?`` included when any)."""
    kept = {key: str(value) for key, value in params.items() if value not in (None, "")}
    return "?" + urlencode(kept) if kept else ""


#: Longest text a table cell shows (an error summary may be megabytes; the run's page
#: shows it whole once).
CLIP_CHARS = 300


def clip(value: Any, limit: int = CLIP_CHARS) -> str:
    """The start of a long text, with how much was left out."""
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def pretty_json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


FILTERS = {
    "duration": duration,
    "span": span,
    "when": when,
    "percent": percent,
    "number": number,
    "segment": segment,
    "pretty_json": pretty_json,
    "clip": clip,
}
