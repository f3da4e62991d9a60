"""The WHERE clauses a list query and a stats query share: the guide's equality filters,
the instant windows and ``stale=true``, numbered for asyncpg from ``$1``. One table of
filters, so a new filter reaches lists and stats alike."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from server.postgres.stale import overdue_clause
from server.postgres.text import encode
from server.storage.stale import StalePolicy


class RunFilters(Protocol):
    """What ``RunQuery`` and ``StatsQuery`` both carry."""

    @property
    def agent_name(self) -> str | None: ...
    @property
    def job_type(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def created_before(self) -> str | None: ...
    @property
    def created_after(self) -> str | None: ...
    @property
    def start_time_from(self) -> str | None: ...
    @property
    def start_time_to(self) -> str | None: ...
    @property
    def stale(self) -> str | None: ...


def filter_clauses(
    query: RunFilters, stale_rule: tuple[StalePolicy, datetime]
) -> tuple[list[str], list[Any]]:
    """The clauses (to be joined with AND) and their parameters. ``stale_rule``: the
    reaper's policy and the instant, applied when the query asks for ``stale``."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.stale is not None:
        clause, clause_params = overdue_clause(*stale_rule, 1)
        clauses.append(clause)
        params.extend(clause_params)
    for column, operator, value in (
        ("agent_name", "=", encode(query.agent_name)),
        ("job_type", "=", encode(query.job_type)),
        ("status", "=", query.status),
        ("created_at", "<", query.created_before),
        ("created_at", ">", query.created_after),
        ("start_time", ">=", query.start_time_from),
        ("start_time", "<=", query.start_time_to),
    ):
        if value is not None:
            params.append(value)
            clauses.append(f"{column} {operator} ${len(params)}::text")
    return clauses, params
