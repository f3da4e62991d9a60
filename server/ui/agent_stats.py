"""What the dashboard knows of agents: their runs per status since a cut
(``DashboardReads.agent_activity``), when each was last seen, and which fell silent
(longer than usual without a run). The windows are on created_at (the backends read
each agent's runs through their (agent, status, created_at) index).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from server.contract.timestamps import format_instant
from server.storage.dashboard import AgentActivity, DashboardReads
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


async def silent_fleet(
    reads: DashboardReads,
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
        seen.update(await reads.last_seen("agent_name", absent))
    horizon = format_instant(now - RETIRED_AFTER)
    recent = sorted(((last, name) for name, last in seen.items() if last >= horizon), reverse=True)
    for last, name in recent[:LONG_SILENT_CHECKED]:
        before = format_instant(_parse(last) - RHYTHM_LOOKBACK)
        found += silent_agents(await reads.agent_activity([name], before), now, before)
    _by_silence(found)
    return found
