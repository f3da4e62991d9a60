"""What the dashboard knows of agents: their runs per status since a cut, when each was
last seen, and which fell silent (longer than usual without a run).

Read from ``idx_runs_agent_status_created`` (agent, status, created_at): one index range
per (agent, status), from the index alone, so the agents' windows are on created_at.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

from server.contract.timestamps import format_instant
from server.ui.queries import AGENT_INDEX, FAILED, STATUS_JSON
from server.ui.window import RHYTHM_LOOKBACK

#: An agent is silent when its last run is older than SILENT_FACTOR x its mean gap
#: between runs over the rhythm lookback (and at least SILENT_FLOOR), given at least
#: SILENT_MIN_RUNS runs there to have a rhythm.
SILENT_FACTOR = 3
SILENT_FLOOR = timedelta(minutes=30)
SILENT_MIN_RUNS = 3
#: An agent without a run for longer than this is taken as retired, not silent.
RETIRED_AFTER = timedelta(days=30)
#: Agents with too few runs in the lookback whose rhythm is measured before their last
#: run instead, at most (the most recently seen first): a bound on the page's cost.
LONG_SILENT_CHECKED = 50


def _parse(instant: str) -> datetime:
    return datetime.fromisoformat(instant)


@dataclass
class AgentActivity:
    """An agent's runs recorded since a cut, per status, and when."""

    name: str
    by_status: dict[str, int] = field(default_factory=dict)
    first: str | None = None
    last: str | None = None

    @property
    def runs(self) -> int:
        return sum(self.by_status.values())

    @property
    def success_rate(self) -> float | None:
        finished = self.runs - self.by_status.get("running", 0)
        return self.by_status.get("success", 0) / finished if finished else None

    @property
    def failed(self) -> int:
        return sum(self.by_status.get(status, 0) for status in FAILED)


def agent_activity(
    conn: sqlite3.Connection, agents: list[str] | tuple[str, ...], since: str
) -> dict[str, AgentActivity]:
    """Runs recorded after ``since`` per agent and status: one range of the agent index
    per (agent, status), read from the index alone."""
    found: dict[str, AgentActivity] = {}
    # One scalar subquery per (agent, status): three aggregates over one index range,
    # packed in one text as "count length(first) first last" (length-prefixed: whatever
    # another writer put in created_at). A join grouped by agent and status sorted every
    # entry (65 ms for a 7-day lookback at 1M runs); three subqueries each cost a seek per
    # pair (48 ms); this, about 40.
    rows = conn.execute(
        "SELECT a.value, s.value, (SELECT count(*) || ' ' || length(min(created_at)) || ' '"
        f" || min(created_at) || max(created_at) FROM agent_runs INDEXED BY {AGENT_INDEX}"
        "  WHERE agent_name = a.value AND status = s.value AND created_at > ?)"
        " FROM json_each(?) AS a CROSS JOIN json_each(?) AS s",
        (since, orjson.dumps(list(agents)).decode(), STATUS_JSON),
    )
    for agent, status, packed in rows:
        if packed is None:  # no run: min() is NULL, and so is the text
            continue
        count, width, both = str(packed).split(" ", 2)
        first, last = both[: int(width)], both[int(width) :]
        activity = found.setdefault(agent, AgentActivity(agent))
        activity.by_status[status] = int(count)
        activity.first = first if activity.first is None else min(activity.first, first)
        activity.last = last if activity.last is None else max(activity.last, last)
    return found


_LAST_SEEN_INDEX = {"agent_name": AGENT_INDEX, "job_type": "idx_runs_job_status_created"}


def last_seen(
    conn: sqlite3.Connection, column: str, values: list[str] | tuple[str, ...]
) -> dict[str, str]:
    """Each agent's (job type's) newest run's created_at: one index seek per (value,
    status), on the list index that leads with the column."""
    index = _LAST_SEEN_INDEX[column]
    rows = conn.execute(
        "SELECT a.value, max(("
        f"  SELECT max(created_at) FROM agent_runs INDEXED BY {index}"
        f"   WHERE {column} = a.value AND status = s.value))"
        " FROM json_each(?) AS a CROSS JOIN json_each(?) AS s GROUP BY a.value",
        (orjson.dumps(list(values)).decode(), STATUS_JSON),
    )
    return {str(agent): str(last) for agent, last in rows if last is not None}


@dataclass(frozen=True)
class Silent:
    name: str
    last: str
    runs: int
    usual_gap: timedelta
    silent_for: timedelta
    #: The rhythm's runs are those recorded after this instant (a link's created_after).
    since: str = ""


def silent_agents(
    activity: dict[str, AgentActivity], now: datetime, since: str = ""
) -> list[Silent]:
    """Agents not seen for longer than usual: their last run (over ``lookback``) is older
    than SILENT_FACTOR x their mean gap between runs there, and than SILENT_FLOOR. The mean
    gap is (last - first) / (runs - 1): three aggregates of the index, where a median would
    need every gap. Longest silence relative to the usual gap first."""
    found = []
    for agent in activity.values():
        if agent.runs < SILENT_MIN_RUNS or agent.first is None or agent.last is None:
            continue
        last = _parse(agent.last)
        gap = (last - _parse(agent.first)) / (agent.runs - 1)
        silent_for = now - last
        if silent_for > max(gap * SILENT_FACTOR, SILENT_FLOOR):
            found.append(Silent(agent.name, agent.last, agent.runs, gap, silent_for, since))
    _by_silence(found)
    return found


def _by_silence(found: list[Silent]) -> None:
    found.sort(key=lambda s: s.silent_for / max(s.usual_gap, timedelta(seconds=1)), reverse=True)


def silent_fleet(
    conn: sqlite3.Connection,
    agents: list[str] | tuple[str, ...],
    activity: dict[str, AgentActivity],
    since: str,
    now: datetime,
) -> list[Silent]:
    """``silent_agents`` of ``activity`` (runs after ``since``), and the agents it cannot
    judge, too few runs there, because they stopped long ago: their rhythm is measured
    over the lookback before their own last run (one that stopped 8 days ago was the most
    silent agent, and was not listed). Retired agents (RETIRED_AFTER) are left out."""
    found = silent_agents(activity, now, since)
    # Too few runs after ``since``: their last is known; none at all: looked up.
    seen = {
        name: agent.last
        for name, agent in activity.items()
        if agent.runs < SILENT_MIN_RUNS and agent.last is not None
    }
    absent = [name for name in agents if name not in activity]
    if absent:
        seen.update(last_seen(conn, "agent_name", absent))
    horizon = format_instant(now - RETIRED_AFTER)
    recent = sorted(((last, name) for name, last in seen.items() if last >= horizon), reverse=True)
    for last, name in recent[:LONG_SILENT_CHECKED]:
        before = format_instant(_parse(last) - RHYTHM_LOOKBACK)
        found += silent_agents(agent_activity(conn, [name], before), now, before)
    _by_silence(found)
    return found
