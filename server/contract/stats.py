"""``GET /api/v1/stats``: its query (the list's filters, a window, group_by) and answer."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.contract.fields import AnyStatus, Instant
from server.contract.models import RunQuery

GroupKey = Literal["agent_name", "job_type", "status", "day", "hour"]
GROUP_KEYS: tuple[str, ...] = get_args(GroupKey)


def _described(name: str) -> Any:
    """The list's own description of a filter, so both endpoints document it alike."""
    return RunQuery.model_fields[name].description


class StatsQuery(BaseModel):
    """Query string of ``GET /api/v1/stats``: the list's filters, grouped."""

    model_config = ConfigDict(extra="ignore")

    group_by: list[GroupKey] = Field(
        default_factory=list,
        description="Comma-separated (or repeated) keys among agent_name, job_type, status, "
        "day, hour: one group per distinct combination. Absent or empty: one group of every "
        "matching run. day and hour are the UTC day / hour of start_time.",
    )
    agent_name: str | None = None
    job_type: str | None = None
    status: AnyStatus | None = None
    created_before: Instant | None = Field(default=None, description=_described("created_before"))
    created_after: Instant | None = Field(default=None, description=_described("created_after"))
    start_time_from: Instant | None = Field(
        default=None,
        description="Inclusive lower bound of the window (on start_time). Absent: unbounded.",
    )
    start_time_to: Instant | None = Field(
        default=None,
        description="Inclusive upper bound of the window (on start_time). Absent: unbounded.",
    )
    stale: Literal["true"] | None = Field(default=None, description=_described("stale"))

    @field_validator("group_by", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [] if value == "" else [part.strip() for part in value.split(",")]
        return value

    @field_validator("group_by")
    @classmethod
    def _once_each(cls, keys: list[str]) -> list[str]:
        if len(set(keys)) != len(keys):
            raise ValueError("each group_by key may be given once")
        if "day" in keys and "hour" in keys:
            raise ValueError("group by day or by hour, not both (an hour names its day)")
        return keys

    @model_validator(mode="after")
    def _ordered_bounds(self) -> StatsQuery:
        for low, high in (
            ("start_time_from", "start_time_to"),
            ("created_after", "created_before"),
        ):
            first, last = getattr(self, low), getattr(self, high)
            if first is not None and last is not None and first > last:
                raise ValueError(f"{low} is after {high}")
        return self


# ---- the answer (documented in the OpenAPI schema) -----------------------------------


class DurationStats(BaseModel):
    count: int = Field(description="Finished runs with a duration (duration_ms > 0).")
    p50: int | None = Field(description="Median duration in ms (see `percentiles`).")
    p95: int | None
    max: int | None = Field(description="Longest duration in ms (exact).")


class ItemTotals(BaseModel):
    discovered: int
    succeeded: int
    failed: int


class StatsGroup(BaseModel):
    key: dict[str, str] = Field(description="This group's value of each group_by key.")
    runs: int
    by_status: dict[str, int] = Field(description="Runs per status, every status listed.")
    success_rate: float | None = Field(
        description="success / finished runs (runs not `running`); null without any."
    )
    duration_ms: DurationStats
    items: ItemTotals
    first_start: str
    last_start: str


class StatsAnswer(BaseModel):
    group_by: list[str]
    filters: dict[str, str] = Field(description="The filters and window applied.")
    percentiles: str = Field(description="How p50/p95 are computed (their largest error).")
    groups: list[StatsGroup] = Field(description="Groups with at least one run, by key.")
