"""The dashboard's time window (``?window=24h|7d``) and the instants it spans."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from server.contract.timestamps import format_instant

#: The windows a page offers, by the name the query string carries.
WINDOWS: dict[str, timedelta] = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "24h"
#: Days the duration charts cover, whatever the window (a 24 h window has only 1-2 days).
CHART_DAYS = 14
#: Lookback over which an agent's usual rhythm is measured (see ``agent_stats.silent_agents``).
RHYTHM_LOOKBACK = timedelta(days=7)


class BadParameter(ValueError):
    """A query parameter the page cannot use; the message says which and why."""


@dataclass(frozen=True)
class Window:
    name: str
    now: datetime

    @property
    def span(self) -> timedelta:
        return WINDOWS[self.name]

    @property
    def start(self) -> str:
        """The window's first instant, canonical (as stored: text order is time order)."""
        return format_instant(self.now - self.span)

    @property
    def end(self) -> str:
        return format_instant(self.now)

    @property
    def hours(self) -> int:
        return int(self.span.total_seconds() // 3600)

    def ago(self, delta: timedelta) -> str:
        return format_instant(self.now - delta)


def parse_window(value: str | None, now: datetime) -> Window:
    """The window named by ``?window=``; absent or empty is the default."""
    name = value or DEFAULT_WINDOW
    if name not in WINDOWS:
        raise BadParameter(f"window must be one of {', '.join(WINDOWS)} (got {name[:40]!r})")
    return Window(name, now)
