"""How a list query with a ``start_time`` bound is read.

The list order is ``created_at``, so a start_time window is not a range of the
equality index that serves the page: walking that index newest first and filtering
by start_time passes over every run recorded after the window, and, once the
window's matches run out (the last page, or a window holding fewer than a page),
over every older run too. One index-only range read of the window through
``START_TIME_INDEX`` (start_time, created_at) settles it:

- a window of at most ``read_max`` runs is read whole and sorted (bounded work,
  whichever filters and however old);
- a wider one is walked, bounded by the created_at span of the runs in it
  (exact: every run in the window has its created_at inside), so the walk starts
  at the window's newest run and stops at its oldest;
- a window wider than ``bound_max`` runs is walked unbounded: its matches are
  dense, so a page fills fast once the walk reaches it; but an old one is reached
  only after every run recorded since (84 ms for 50,000 runs a month back, at 1M
  runs), and its last page walks on to the oldest run.

Measured with ``python bench/index_cost.py --rows 1000000 --runs 1 --sync FULL``: a
window of 100 to 1,000 runs costs 0.03-3.4 ms read whole (a walk: up to 300 ms); a
recent wider one 0.3 ms walked in its span; an old one of 5,000 runs 24 ms (runs
recorded days late stretch its span). The choice itself reads at most 20,001 index
entries (at most 5 ms).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from server.contract.models import RunQuery
from server.storage.schema import START_TIME_INDEX

#: Windows holding at most this many runs are read whole and sorted (measured in
#: ``bench/index_cost.py``: ~2 ms at 1,000 runs, against a walk that can read the table).
WINDOW_READ_MAX_RUNS = 1000
#: Windows holding more than this many runs are walked without created_at bounds:
#: finding the bounds reads every entry of the window (index-only, ~0.2 us each).
WINDOW_BOUND_MAX_RUNS = 20_000


@dataclass(frozen=True)
class WindowPlan:
    #: Read the window through START_TIME_INDEX and sort it.
    read_whole: bool = False
    #: Inclusive created_at bounds of every run in the window, for the walk.
    created_span: tuple[str, str] | None = None


WALK = WindowPlan()


def plan_window(
    conn: sqlite3.Connection,
    query: RunQuery,
    *,
    read_max: int = WINDOW_READ_MAX_RUNS,
    bound_max: int = WINDOW_BOUND_MAX_RUNS,
) -> WindowPlan:
    """The plan for the query's start_time window; run it in the same read transaction
    as the page, so the span holds for the rows the page sees."""
    bounds = [
        (f"start_time {operator} ?", value)
        for operator, value in ((">=", query.start_time_from), ("<=", query.start_time_to))
        if value is not None
    ]
    if not bounds:
        return WALK
    sql = (
        "SELECT count(*), min(created_at), max(created_at) FROM (SELECT created_at"
        f" FROM agent_runs INDEXED BY {START_TIME_INDEX}"
        f" WHERE {' AND '.join(clause for clause, _ in bounds)} LIMIT ?)"
    )
    count, oldest, newest = conn.execute(
        sql, [*(value for _, value in bounds), max(read_max, bound_max) + 1]
    ).fetchone()
    if count <= read_max:
        return WindowPlan(read_whole=True)
    if count <= bound_max:
        return WindowPlan(created_span=(str(oldest), str(newest)))
    return WALK
