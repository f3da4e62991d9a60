"""Request and response models of the API, shared by the server and the sidecar.

The sidecar validates with these same classes, so it refuses exactly what the
server refuses and nothing invalid is ever spooled.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.contract.export import PAGING
from server.contract.fields import (
    AnyStatus,
    CanonicalStatus,
    CommitHash,
    CommitSource,
    Counter,
    CounterDefaultZero,
    GitCommitHash,
    HeartbeatTimeout,
    Identifier,
    Instant,
    JsonObject,
    SnapshotSequence,
    SnapshotSource,
)

_JSON_TEXT_NOTE = (
    "A JSON object; JSON text holding an object (as the reference client's RunRecord keeps "
    "{field}) is decoded and stored as that object. Any other string is refused."
)
_ECHOED_NOTE = (
    "Maintained by the server; accepted so a client can send a run back as it read it, "
    "and ignored (never stored, never listed in fields_updated)."
)


class _Descriptive(BaseModel):
    """Optional descriptive fields a run may carry, settable on create and update."""

    end_time: Instant | None = None
    agent_owner: str | None = None
    product: str | None = None
    product_family: str | None = None
    platform: str | None = None
    subdomain: str | None = None
    website: str | None = None
    website_section: str | None = None
    item_name: str | None = None
    input_summary: str | None = None
    output_summary: str | None = None
    source_ref: str | None = None
    target_ref: str | None = None
    error_summary: str | None = None
    error_details: str | None = None
    git_repo: str | None = None
    git_branch: str | None = None
    git_commit_hash: GitCommitHash | None = Field(
        default=None,
        description="Revision of any VCS, 1-255 characters without whitespace or controls; "
        "hexadecimal values are stored lower case, others as sent.",
    )
    git_run_tag: str | None = None
    git_commit_source: CommitSource | None = None
    git_commit_author: str | None = None
    git_commit_timestamp: Instant | None = None
    host: str | None = None
    environment: str | None = None
    trigger_type: str | None = None
    metrics_json: JsonObject | None = Field(
        default=None, description=_JSON_TEXT_NOTE.format(field="metrics_json")
    )
    context_json: JsonObject | None = Field(
        default=None, description=_JSON_TEXT_NOTE.format(field="context_json")
    )
    insight_id: str | None = None
    parent_run_id: str | None = None
    heartbeat_timeout_s: HeartbeatTimeout | None = Field(
        default=None,
        description="Seconds without any write (PATCH, heartbeat, ...) after which this run, "
        "while `running`, is stale and the server's reaper marks it `timeout`; 1 to "
        "2,592,000 (30 days). Null: the job type's default (TELEMETRY_STALE_AFTER_BY_JOB), "
        "else TELEMETRY_STALE_AFTER_S.",
    )


class RunCreate(_Descriptive):
    """Body of ``POST /api/v1/runs`` and one item of a batch.

    Unknown fields are ignored, as the reference does, so clients that send its
    client-side bookkeeping fields (``api_posted`` …) keep working. Unlike the
    reference, ``git_commit_source/author/timestamp`` are stored.
    """

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    event_id: Identifier
    run_id: Identifier
    agent_name: Identifier
    job_type: Identifier
    start_time: Instant
    status: AnyStatus = "running"
    created_at: Instant | None = Field(
        default=None,
        description="Ingestion instant; set by the server (or the accepting sidecar) if absent.",
    )
    items_discovered: CounterDefaultZero = 0
    items_succeeded: CounterDefaultZero = 0
    items_failed: CounterDefaultZero = 0
    items_skipped: CounterDefaultZero = 0
    duration_ms: CounterDefaultZero = 0


class RunUpdate(_Descriptive):
    """Body of ``PATCH /api/v1/runs/{event_id}``: only the fields given are set.

    Statuses must be canonical (aliases are refused, as the guide says).
    Unknown fields are refused, so a typo never silently loses an update; the
    fields the server maintains (``ECHOED``) are accepted and ignored, because
    clients send them back (the reference client's ``end_run`` adds
    ``updated_at``). ``event_id`` is accepted only equal to the path's (checked
    by ``server.contract.updates``): a run is never renamed. Explicit ``null``
    clears an optional field; it is refused for a field the run cannot be without.
    """

    model_config = ConfigDict(extra="forbid")
    ECHOED: ClassVar[tuple[str, ...]] = (
        "created_at",
        "updated_at",
        "last_seen_at",
        "id",
        "commit_url",
        "repo_url",
    )
    NOT_NULL: ClassVar[frozenset[str]] = frozenset(
        {
            "run_id",
            "agent_name",
            "job_type",
            "start_time",
            "status",
            "items_discovered",
            "items_succeeded",
            "items_failed",
            "items_skipped",
            "duration_ms",
        }
    )

    run_id: Identifier | None = None
    agent_name: Identifier | None = None
    job_type: Identifier | None = None
    start_time: Instant | None = None
    status: CanonicalStatus | None = None
    items_discovered: Counter | None = None
    items_succeeded: Counter | None = None
    items_failed: Counter | None = None
    items_skipped: Counter | None = None
    duration_ms: Counter | None = None
    # Echoed back by clients, never changes (exclude=True keeps them out of changes()).
    event_id: Identifier | None = Field(
        default=None,
        exclude=True,
        description="Accepted only if equal to the path's event_id, then ignored; "
        "any other value is refused with 422 (a run's event_id never changes).",
    )
    created_at: Any = Field(default=None, exclude=True, description=_ECHOED_NOTE)
    updated_at: Any = Field(default=None, exclude=True, description=_ECHOED_NOTE)
    last_seen_at: Any = Field(default=None, exclude=True, description=_ECHOED_NOTE)
    id: Any = Field(default=None, exclude=True, description=_ECHOED_NOTE)
    commit_url: Any = Field(default=None, exclude=True, description=_ECHOED_NOTE)
    repo_url: Any = Field(default=None, exclude=True, description=_ECHOED_NOTE)

    @model_validator(mode="after")
    def _required_columns_not_null(self) -> RunUpdate:
        for name in self.model_fields_set & self.NOT_NULL:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client set, in declaration order."""
        return self.model_dump(exclude_unset=True)


class CommitAssociation(BaseModel):
    """Body of ``POST /api/v1/runs/{event_id}/associate-commit``."""

    model_config = ConfigDict(extra="forbid")

    commit_hash: CommitHash = Field(
        description="Commit hash of any VCS: 7-40 characters without whitespace or controls; "
        "hexadecimal values are stored lower case, others as sent."
    )
    commit_source: CommitSource
    commit_author: str | None = None
    commit_timestamp: Instant | None = None

    def changes(self) -> dict[str, Any]:
        """The run columns this association sets."""
        fields: dict[str, Any] = {
            "git_commit_hash": self.commit_hash,
            "git_commit_source": self.commit_source,
        }
        if self.commit_author is not None:
            fields["git_commit_author"] = self.commit_author
        if self.commit_timestamp is not None:
            fields["git_commit_timestamp"] = self.commit_timestamp
        return fields


class UpsertItem(BaseModel):
    """One item of ``POST /api/v1/runs/batch?mode=upsert`` (the sidecar's forwarding).

    ``create`` is inserted if the event_id is new and never overwrites an
    existing run (a duplicate create changes nothing, as a direct POST);
    ``update`` is then applied, except that a terminal status is never
    replaced by ``running``; then ``metrics_patch``. Every item refreshes the
    run's ``last_seen_at`` (to ``seen_at``, never past the server's clock, never
    backwards). Applying the same item twice gives the same state.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: Identifier
    create: RunCreate | None = None
    update: RunUpdate | None = None
    seen_at: Instant | None = Field(
        default=None,
        description="When the agent made the newest operation folded into this item (a "
        "sidecar's accepted_at): the run's last_seen_at becomes the later of its stored "
        "value and this instant, never later than the server's clock. Absent: the server's "
        "clock.",
    )
    metrics_patch: JsonObject | None = Field(
        default=None,
        description="An RFC 7396 JSON merge patch applied to metrics_json after create and "
        "update (heartbeats' progress, folded); on a finished run it is not applied.",
    )
    heartbeat: bool = Field(
        default=False,
        description="An item that only says the run is alive (refreshes last_seen_at).",
    )
    source: SnapshotSource | None = Field(
        default=None,
        description="Where this snapshot was made (a sidecar: its id and its spool's), an "
        "opaque id of 1-128 characters A-Z a-z 0-9 . _ : / -. Sent with sequence; both or "
        "neither.",
    )
    sequence: SnapshotSequence | None = Field(
        default=None,
        description="This snapshot's place in its source's order (0..2^63-1, growing with "
        "every operation the source folds in). The server keeps per run the source and "
        "sequence of the last snapshot applied; an item from the same source with a lower "
        "sequence was overtaken by a newer snapshot (a batch committed late by one replica "
        "after its re-sent copy and newer snapshots went to another): its create, update "
        "and metrics_patch are not applied and it is counted in duplicates. An item from "
        "another source, or without one, is applied. Direct writes leave the kept pair "
        "alone.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> UpsertItem:
        if (
            self.create is None
            and self.update is None
            and self.metrics_patch is None
            and not self.heartbeat
        ):
            raise ValueError(
                "an upsert item needs at least one of 'create', 'update', 'metrics_patch' "
                "or 'heartbeat': true"
            )
        if (self.source is None) != (self.sequence is None):
            raise ValueError("'source' and 'sequence' go together: send both or neither")
        if self.create is not None and self.create.event_id != self.event_id:
            raise ValueError("create.event_id must equal event_id")
        if self.update is not None and self.update.event_id not in (None, self.event_id):
            raise ValueError("update.event_id must equal event_id (a run is never renamed)")
        return self


class HeartbeatBody(BaseModel):
    """Body of ``POST /api/v1/runs/{event_id}/heartbeat`` (an empty body is one too)."""

    model_config = ConfigDict(extra="forbid")

    progress: dict[str, Any] | None = Field(
        default=None,
        description="Applied to the run's metrics_json as an RFC 7396 JSON merge patch "
        "(null members remove keys; a run without metrics_json starts from {}).",
    )


#: The deepest ``offset`` a list query may ask for: deeper pages cost a walk over every
#: skipped row, so walking far is done with the keyset ``cursor`` instead.
MAX_OFFSET = 10_000


class RunQuery(BaseModel):
    """Query string of ``GET /api/v1/runs``."""

    model_config = ConfigDict(extra="ignore")

    agent_name: str | None = None
    job_type: str | None = None
    status: AnyStatus | None = None
    created_before: Instant | None = Field(default=None, description="Exclusive upper bound")
    created_after: Instant | None = Field(default=None, description="Exclusive lower bound")
    start_time_from: Instant | None = Field(default=None, description="Inclusive lower bound")
    start_time_to: Instant | None = Field(default=None, description="Inclusive upper bound")
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(
        default=0,
        ge=0,
        json_schema_extra={"maximum": MAX_OFFSET},
        description=f"Runs to skip, at most {MAX_OFFSET:,}; to walk further, follow the "
        "`X-Next-Cursor` answer header with `cursor`.",
    )
    cursor: str | None = Field(
        default=None,
        max_length=512,
        description="Opaque: the `X-Next-Cursor` header of the previous page, sent with the "
        "same filters; the next page starts after it (no skips or repeats while runs are "
        "inserted). Not combined with `offset`.",
    )
    stale: Literal["true"] | None = Field(
        default=None,
        description="`true`: only runs still `running` whose time without a write exceeds "
        "their allowance (heartbeat_timeout_s, else the job type's, else the server's "
        "default), not yet reaped; this includes runs the reaper holds back while their "
        "sidecar cannot deliver. Any other value is refused (omit the parameter for all runs).",
    )

    @field_validator("offset")
    @classmethod
    def _bounded_offset(cls, offset: int) -> int:
        if offset > MAX_OFFSET:
            raise ValueError(
                f"offset must be at most {MAX_OFFSET}; to walk further, send `cursor` with "
                "the X-Next-Cursor header of the previous page"
            )
        return offset

    @model_validator(mode="after")
    def _one_way_to_page(self) -> RunQuery:
        if self.cursor is not None and self.offset:
            raise ValueError("send either offset or cursor, not both")
        return self

    def filters(self) -> dict[str, str]:
        """The filters (not the paging) of this query: what a cursor is bound to. The
        same dict as ``model_dump(exclude=PAGING, exclude_none=True)`` (key order too:
        cursors already issued stay valid), without pydantic's serialiser per page."""
        return {
            name: value for name in _RUN_QUERY_FILTERS if (value := getattr(self, name)) is not None
        }


#: RunQuery's filter fields (not ``PAGING``), in the order model_dump gives them.
_RUN_QUERY_FILTERS = tuple(name for name in RunQuery.model_fields if name not in PAGING)


# ---- responses (documented in the OpenAPI schema) ---------------------------------


class CreateResponse(BaseModel):
    status: Literal["created"]
    event_id: str
    run_id: str


class DuplicateResponse(BaseModel):
    status: Literal["duplicate"]
    event_id: str
    message: str = "Event already exists (idempotent)"


class UpdateResponse(BaseModel):
    event_id: str
    updated: bool
    fields_updated: list[str]


class AssociateResponse(BaseModel):
    status: Literal["success"]
    event_id: str
    run_id: str
    commit_hash: str


class BatchItemError(BaseModel):
    index: int
    event_id: str | None
    message: str


class BatchResponse(BaseModel):
    inserted: int
    duplicates: int
    errors: list[BatchItemError]
    total: int


class UpsertResponse(BatchResponse):
    updated: int


class RunRecord(RunCreate):
    """A stored run as queries return it."""

    model_config = ConfigDict(extra="allow")

    created_at: str | None = None
    updated_at: str | None = None
    last_seen_at: str | None = Field(
        default=None,
        description="The last time anything was heard of this run (created, updated, "
        "heartbeat, sidecar item): same format as created_at, never moves backwards.",
    )
    commit_url: str | None = None
    repo_url: str | None = None


class ErrorBody(BaseModel):
    detail: Any
    error: str
