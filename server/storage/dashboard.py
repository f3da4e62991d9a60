"""The dashboard's reads, as one protocol both backends implement (``DashboardReads``).

A page composes its reads (``server.ui.queries``, ``server.ui.agent_stats``: no SQL) as
one coroutine over this protocol; ``read_dashboard`` of either database runs it in one
read snapshot, so the page's numbers agree. The SQL is the backends' own:
``server.storage.dashboard_sqlite`` (SQLite) and ``server.postgres.dashboard``. What they
answer is plain Python defined here, so both answer the same values and the pages do
not know which backend they read. Instants are canonical UTC text on both backends
(text order is time order), so they compare and render alike.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from server.contract.models import RunQuery
from server.contract.stats import StatsQuery
from server.storage.cursor import Position
from server.storage.runs import Page

T = TypeVar("T")

#: Statuses that count as a failed run on the dashboard.
FAILED = ("failure", "timeout")
#: Finished, not failed: a run of these ends a failing streak.
RECOVERED = ("success", "partial", "cancelled")
#: Pairs ``failing_now`` describes in full (their streaks), at most.
FAILING_SHOWN = 50
#: Related runs (same run_id, parent, children) are looked for among the runs created
#: this long before or after the run: run_id and parent_run_id have no index.
RELATED_SPAN = timedelta(hours=24)
RELATED_SHOWN = 50
#: Rows read for relatives, at most (four lists of ``RELATED_SHOWN``).
RELATED_READ = RELATED_SHOWN * 4
#: The columns ``last_seen`` looks an instant up by.
LAST_SEEN_COLUMNS = ("agent_name", "job_type")


@dataclass
class Failing:
    """An agent + job whose latest finished run failed, with its failing streak."""

    agent_name: str
    job_type: str
    last_failed: str
    #: The streak: failed runs since the last run that was not (within what is stored).
    failures: int
    since: str
    last_ok: str | None
    event_id: str = ""
    status: str = ""
    error_summary: str | None = None
    #: The streak per failed status (a list filters on one status: each is a link).
    by_status: dict[str, int] = field(default_factory=dict)


def failing(
    agent: str,
    job: str,
    last_failed: str,
    last_ok: str,
    streak: Sequence[tuple[str, int, str]],
) -> Failing:
    """A failing pair from its streak's rows (status, runs, first created_at), as both
    backends read them."""
    by_status = {str(status): int(count) for status, count, _ in streak}
    first = min((str(earliest) for _, _, earliest in streak), default=last_failed)
    item = Failing(agent, job, last_failed, sum(by_status.values()), first, last_ok or None)
    item.by_status = {status: by_status[status] for status in FAILED if status in by_status}
    return item


@dataclass
class RunDetail:
    run: dict[str, Any]
    reaped_at: str | None
    sidecar_id: str | None
    same_run_id: list[dict[str, Any]]
    parents: list[dict[str, Any]]
    children: list[dict[str, Any]]
    #: Runs sharing its parent_run_id (none without one).
    siblings: list[dict[str, Any]] = field(default_factory=list)


def run_detail(
    run: dict[str, Any],
    reaped_at: str | None,
    sidecar_id: str | None,
    nearby: list[dict[str, Any]],
) -> RunDetail:
    """A run's page data from the runs created near it (newest first), sorted into its
    relatives by run_id and parent_run_id."""
    run_id, parent = run["run_id"], run.get("parent_run_id")
    same, parents, children, siblings = [], [], [], []
    for other in nearby:
        if other["run_id"] == run_id:
            same.append(other)
        if parent is not None and other["run_id"] == parent:
            parents.append(other)
        if other.get("parent_run_id") == run_id:
            children.append(other)
        if parent is not None and other.get("parent_run_id") == parent:
            siblings.append(other)
    return RunDetail(
        run,
        reaped_at,
        sidecar_id,
        same[:RELATED_SHOWN],
        parents[:RELATED_SHOWN],
        children[:RELATED_SHOWN],
        siblings[:RELATED_SHOWN],
    )


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

    def add(self, status: str, count: int, first: str, last: str) -> None:
        """One status's runs (count, first and last created_at)."""
        self.by_status[status] = count
        self.first = first if self.first is None else min(self.first, first)
        self.last = last if self.last is None else max(self.last, last)


class DashboardReads(Protocol):
    """What a dashboard page reads, inside one snapshot taken at one instant (``now``
    judges ``stale``)."""

    async def stats(self, query: StatsQuery, *, agent_index: bool = False) -> list[dict[str, Any]]:
        """The API's stats groups (``stats.TooManyGroups`` past its limit);
        ``agent_index``: a query of one agent by created_at (SQLite reads its agent
        index rather than the start_time one)."""
        ...

    async def runs(self, query: RunQuery, after: Position | None = None) -> Page:
        """A page of the runs list, as ``GET /api/v1/runs`` answers it."""
        ...

    async def failing_now(
        self, since: str, *, job_type: str | None = None, agent_name: str | None = None
    ) -> tuple[int, list[Failing]]:
        """Agent + job pairs with a failed run recorded since ``since`` and no finished,
        non-failed run after it (a run still ``running`` does not clear the alarm),
        newest failure first (then by agent and job): how many, and the first
        ``FAILING_SHOWN`` with their streaks."""
        ...

    async def run_detail(self, event_id: str) -> RunDetail | None:
        """A run, its bookkeeping (reaped_at, sidecar_id) and its relatives among the
        ``RELATED_READ`` newest runs created within ``RELATED_SPAN`` of it."""
        ...

    async def agent_activity(self, agents: Sequence[str], since: str) -> dict[str, AgentActivity]:
        """Runs recorded after ``since`` per agent and status (agents without any are
        left out)."""
        ...

    async def last_seen(self, column: str, values: Sequence[str]) -> dict[str, str]:
        """Each agent's (``column="job_type"``: job type's) newest created_at, for those
        with a run."""
        ...


#: A page's reads: called once per attempt (SQLite may run it twice, see ``Reader``),
#: so it only reads.
DashboardFetch = Callable[[DashboardReads], Coroutine[Any, Any, T]]
