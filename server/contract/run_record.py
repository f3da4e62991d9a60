"""The run record as answered: its fields, in order, and the URLs derived from them.

Both daemons answer a run in this shape (an agent cannot tell which one it talks to):
the server from its stored rows (``agent_runs`` has a column per field, in this order),
spoold from the fields of a run it still queues. Field lists are named ``*_COLUMNS``
because the server stores each field in the column of that name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.contract.urls import build_commit_url, build_repo_url

RUN_TEXT_COLUMNS: tuple[str, ...] = (
    "run_id",
    "agent_name",
    "job_type",
    "status",
    "start_time",
    "end_time",
    "agent_owner",
    "product",
    "product_family",
    "platform",
    "subdomain",
    "website",
    "website_section",
    "item_name",
    "input_summary",
    "output_summary",
    "source_ref",
    "target_ref",
    "error_summary",
    "error_details",
    "git_repo",
    "git_branch",
    "git_commit_hash",
    "git_run_tag",
    "git_commit_source",
    "git_commit_author",
    "git_commit_timestamp",
    "host",
    "environment",
    "trigger_type",
    "insight_id",
    "parent_run_id",
)
RUN_COUNTER_COLUMNS: tuple[str, ...] = (
    "items_discovered",
    "items_succeeded",
    "items_failed",
    "items_skipped",
    "duration_ms",
)
RUN_JSON_COLUMNS: tuple[str, ...] = ("metrics_json", "context_json")
#: Settable by a client, answered, but neither text nor a counter.
RUN_STALENESS_COLUMNS: tuple[str, ...] = ("heartbeat_timeout_s",)
#: Fields a client may set, in answer (and storage) order; event_id and timestamps excluded.
RUN_DATA_COLUMNS: tuple[str, ...] = (
    RUN_TEXT_COLUMNS + RUN_COUNTER_COLUMNS + RUN_JSON_COLUMNS + RUN_STALENESS_COLUMNS
)
#: Every field of an answered run but the derived URLs, in answer order.
RUN_COLUMNS: tuple[str, ...] = (
    "event_id",
    *RUN_DATA_COLUMNS,
    "created_at",
    "updated_at",
    "last_seen_at",
)


def with_urls(run: dict[str, Any]) -> dict[str, Any]:
    """A run with its derived commit_url and repo_url (set in place, and returned)."""
    run["commit_url"] = build_commit_url(run.get("git_repo"), run.get("git_commit_hash"))
    run["repo_url"] = build_repo_url(run.get("git_repo"))
    return run


def unstored_run(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A run known only from the fields it was sent with, answered as the server answers a
    new run: every field present, those not sent null, counters 0 and status "running"
    (the stored defaults); keys that are not fields of a run are left out."""
    run: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    run.update(dict.fromkeys(RUN_COUNTER_COLUMNS, 0), status="running")
    run.update({key: value for key, value in fields.items() if key in run})
    return with_urls(run)
