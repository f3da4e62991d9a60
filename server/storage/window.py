"""How a list query with a ``start_time`` bound is read: two arms, each reading only
runs of the window.

The list order is ``created_at``, so a start_time window is not a range of the index
that serves the page. Most runs are recorded as they start, though: a *prompt* run
(``schema.PROMPT_RUN_SQL``: canonical instants, created_at within ``PROMPT_LAG_S`` of
start_time) of a window ``[a, b]`` was created within ``[a - lag, b + lag]``
(``created_range``). The others, *late* runs, are few, and ``LATE_INDEXES`` index them
alone: partial indexes with the leading columns of the list index of each set of
equality filters, then (start_time, created_at). So:

- the near arm walks the list index of the query's equality filters newest first,
  within that created_at range, filtering by start_time: it reads the window's runs
  plus at most ``lag``'s worth of others at each end, and stops at the page;
- the far arm reads, from the late index of the same equality filters (one range per
  status when there is no status filter, as the near arm), the window's late runs
  created outside that range, from the index alone (every entry read matches the
  equality filters and the window), sorts their ids, and fetches as many as a page can
  hold.

Every run of the window is in exactly one arm: a prompt run is in the range, so near;
a late one is near or far by its created_at. The prompt predicate is evaluated only when
a row is written (to set the ``late`` flag), never when a page is read.
``runs.query_sql`` merges the arms newest first in one statement: one snapshot.

Measured at 1M fleet runs (``bench/list_cpu.py``; 1% of runs recorded days late): a
one-day window costs 0.18 ms in SQLite (2.4 ms before migration 8: that plan counted the
window's ~11,000 index entries to choose), a day a month back 0.3 ms (was 49 ms).
The far arm's cost per page grows with the late runs of the window that match the
filters (it reads them all, then sorts their ids, on every page): a back-fill that
records many old runs at once makes it a read of the window's matching runs, as is an
open-ended ``start_time_to`` on a fleet where most runs are late. Until migration 11 the
far arm read one index of late runs by (start_time, created_at) only, so a filtered
window looked up the row of every late run of the window, of every agent, to check
the filters. What the five indexes of migration 11 cost, and the pages with 40% of
runs late: the README's section on start_time windows.

A window bounded above only (``start_time_to``) wants the late runs started by the bound
and created after it: by start_time, every late run started before the bound (the whole
history), sorted on every page. ``LATE_CREATED_INDEXES`` (migration 12) hold the late runs
newest first, so that far arm can instead be one more range per status in the merge, from
the bound's created_at up, the start_time checked in the index: it stops at the page. It
reads the late runs created after the bound, so ``late_newest_first`` picks it when the
bound is nearer the newest late run's creation than the oldest one's start; both
answer alike.

A window bounded below only (``start_time_from``) wants the late runs started since the
bound and created before ``from - lag``: only runs created, as text, before they started
(a client's clock ahead, or foreign text). Its far arm reads ``EARLY_INDEXES``
(migration 13), which hold only those, so it reads a few entries on every page. By
start_time it read every late run started since ``from``, on every page: at 1M runs, a
window 85 days back cost 0.44 ms of SQLite per page at 1% late and 23.7 ms at 40% late,
against 0.12 ms from the early indexes at either share.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from server.contract.models import RunQuery
from server.storage.schema import (
    EARLY_TERM,
    LATE_CREATED_INDEXES,
    LATE_START_INDEX,
    PROMPT_LAG_S,
)

__all__ = [
    "EARLY",
    "LATE",
    "LATE_START_INDEX",
    "above_range",
    "bounded_above_only",
    "bounded_below_only",
    "created_range",
    "has_window",
    "late_newest_first",
    "outside_range",
]

#: The far arm's filter: word for word the late indexes' WHERE (SQLite uses a partial
#: index only for a query that has its WHERE among its terms).
LATE = "late = 1"
#: The early indexes' other term (``bounded_below_only`` windows' far arm).
EARLY = EARLY_TERM

#: One second more than the lag: julianday() arithmetic is exact to a millisecond.
_MARGIN = timedelta(seconds=PROMPT_LAG_S + 1)


def has_window(query: RunQuery) -> bool:
    return query.start_time_from is not None or query.start_time_to is not None


def _shifted(instant: str, delta: timedelta) -> str:
    """The canonical text of an instant moved by delta (clamped to the calendar)."""
    moment = datetime.fromisoformat(instant)
    try:
        return (moment + delta).isoformat(timespec="microseconds")
    except OverflowError:  # beyond year 1 or 9999: the bound is the calendar's end
        return (
            (datetime.min if delta < timedelta(0) else datetime.max)
            .replace(tzinfo=moment.tzinfo)
            .isoformat(timespec="microseconds")
        )


def bounded_above_only(query: RunQuery) -> bool:
    """A window with ``start_time_to`` alone: its far arm reads the late runs by
    created_at, newest first (see the module docstring)."""
    return query.start_time_to is not None and query.start_time_from is None


def bounded_below_only(query: RunQuery) -> bool:
    """A window with ``start_time_from`` alone: its far arm reads the runs created before
    they started (``EARLY_INDEXES``; see the module docstring)."""
    return query.start_time_from is not None and query.start_time_to is None


def missing_index(exc: sqlite3.OperationalError) -> bool:
    """Whether a read failed on an index a file does not have yet (a tool reading it
    before the server upgraded it), not on anything else (an interrupt, a locked file)."""
    return str(exc).startswith("no such index")


#: Late runs skipped at each end of the history before it is measured: a few runs with a
#: client's clock from 1970 or 2099 must not decide.
_OUTLIERS = 16
#: The history of the late runs, each end read from its late index past the outliers:
#: the oldest start_time and the newest created_at.
_ENDS_SQL = (
    f"SELECT (SELECT start_time FROM agent_runs INDEXED BY {LATE_START_INDEX} WHERE {LATE}"
    f" ORDER BY start_time LIMIT 1 OFFSET {_OUTLIERS}),"
    f" (SELECT created_at FROM agent_runs INDEXED BY {LATE_CREATED_INDEXES[()]} WHERE {LATE}"
    f" ORDER BY created_at DESC LIMIT 1 OFFSET {_OUTLIERS})"
)


def late_newest_first(conn: sqlite3.Connection, query: RunQuery) -> bool:
    """Whether the far arm of a window bounded above only should read its late runs newest
    first (``LATE_CREATED_INDEXES``) rather than by start_time (``LATE_INDEXES``).

    Newest first reads the late runs created after the bound, until the page is full; by
    start_time, every late run started by the bound. With late runs spread over the
    history, the first is the smaller read when the bound is nearer the newest late run's
    creation than the oldest one's start: two short index reads tell, past
    ``_OUTLIERS`` runs at each end. Only a plan choice: both read every run of the window.
    By start_time when that cannot be told: few late runs, text that is not an instant,
    or a file without migration 12's indexes (a tool reading it before the server
    upgraded it)."""
    if not bounded_above_only(query) or query.start_time_to is None:
        return False
    try:
        oldest, newest = conn.execute(_ENDS_SQL).fetchone()
        bound = datetime.fromisoformat(query.start_time_to)
        return bool(
            datetime.fromisoformat(newest) - bound <= bound - datetime.fromisoformat(oldest)
        )
    except sqlite3.OperationalError as exc:
        if missing_index(exc):  # not upgraded yet
            return False
        raise  # an interrupt (the reader's budget), say: not a plan choice
    except (TypeError, ValueError):  # no such run, or foreign text
        return False


def above_range(query: RunQuery) -> tuple[str, str]:
    """The far arm's created_at bound of a window bounded above only: after the near
    arm's range."""
    if query.start_time_to is None:
        raise ValueError("the window has no start_time_to")
    return ("created_at > ?", _shifted(query.start_time_to, _MARGIN))


def created_range(query: RunQuery) -> list[tuple[str, str]]:
    """The created_at clauses (with their value) that hold for every prompt run of the
    query's start_time window."""
    clauses = []
    if query.start_time_from is not None:
        clauses.append(("created_at >= ?", _shifted(query.start_time_from, -_MARGIN)))
    if query.start_time_to is not None:
        clauses.append(("created_at <= ?", _shifted(query.start_time_to, _MARGIN)))
    return clauses


def outside_range(query: RunQuery) -> tuple[str, list[str]]:
    """The clause (and values) of a created_at outside ``created_range``: the far arm's."""
    bounds = created_range(query)
    flipped = [clause.replace(">=", "<").replace("<=", ">") for clause, _ in bounds]
    return f"({' OR '.join(flipped)})", [value for _, value in bounds]
