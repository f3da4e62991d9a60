"""How the status page writes numbers, sizes, durations and instants for people."""

from __future__ import annotations

from datetime import UTC, datetime

from spoold.upstream.selection import public_url as public_url  # the one way to show a URL

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(nbytes: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> 'unknown'."""
    if nbytes is None:
        return "unknown"
    value = float(nbytes)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """95 -> '1 min 35 s'; at most two units; None -> 'none'."""
    if seconds is None:
        return "none"
    seconds = max(0.0, seconds)
    whole = int(seconds)
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if whole < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{whole} s"
    parts = []
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if whole >= length:
            parts.append(f"{whole // length} {unit}")
            whole %= length
        if len(parts) == 2:
            break
    return " ".join(parts)


def count(value: int | None) -> str:
    """12345 -> '12 345' (thin grouping, readable in any locale)."""
    return "unknown" if value is None else f"{value:,}".replace(",", "\u202f")


def plural(value: int, word: str) -> str:
    """(1, 'group') -> '1 group'; (3, 'group') -> '3 groups'."""
    return f"{count(value)} {word}{'' if value == 1 else 's'}"


def rate(per_s: float) -> str:
    """Operations per second, with the precision a glance needs."""
    if per_s == 0:
        return "0"
    if per_s < 10:
        return f"{per_s:.2f}"
    return count(round(per_s))


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole > 0 else "n/a"


def instant(unix: float | None) -> str | None:
    """Unix seconds -> '2026-01-12T10:30:00Z' (UTC, whole seconds); None stays None."""
    if unix is None:
        return None
    try:
        return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):  # a damaged record's time: not a failure
        return None


def parse_instant(text: str | None) -> float | None:
    """An ISO instant (as spoold stamps them) -> Unix seconds; None if absent or unreadable."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
