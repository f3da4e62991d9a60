"""The wire bodies the reference implementation's Python client sends, and what it makes of
the answers (re-expressed from reading ``src/telemetry/client.py``, ``http_client.py`` and
``models.py`` of babar-raza/local-telemetry; none of its code is used).

``TelemetryClient`` writes over HTTP only through these requests:

* ``start_run`` / ``track_run`` entry: ``POST /api/v1/runs`` with the whole ``RunRecord``
  (every dataclass field, ``None`` included, plus ``record_type``; ``created_at`` and
  ``updated_at`` set to now; ``metrics_json`` / ``context_json`` are ``str`` fields).
* ``end_run`` (also at ``track_run`` exit, with ``status="failure"`` and
  ``error_summary="<Type>: <message>"`` when the block raised): ``PATCH`` with status,
  end_time, duration_ms, the three counters, the three summaries and metrics_json, ``None``
  values dropped, then ``updated_at`` added.
* ``associate_commit``: ``POST .../associate-commit`` with commit_hash and commit_source,
  author and timestamp when given.
* the buffer's sync worker: ``POST /api/v1/runs/batch`` with an array of buffered records.

``requests`` encodes with ``json.dumps`` defaults, so non-ASCII travels as ``\\u`` escapes
(emoji as surrogate pairs); ``encode`` does the same.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 7
#: The RunRecord dataclass fields, in declaration order, with their defaults.
RECORD_DEFAULTS: dict[str, Any] = {
    "schema_version": SCHEMA_VERSION,
    "agent_owner": None,
    "end_time": None,
    "status": "running",
    "items_discovered": 0,
    "items_succeeded": 0,
    "items_failed": 0,
    "items_skipped": 0,
    "duration_ms": 0,
    "input_summary": None,
    "output_summary": None,
    "source_ref": None,
    "target_ref": None,
    "error_summary": None,
    "error_details": None,
    "metrics_json": None,
    "context_json": None,
    "insight_id": None,
    "product": None,
    "platform": None,
    "product_family": None,
    "subdomain": None,
    "website": None,
    "website_section": None,
    "item_name": None,
    "git_repo": None,
    "git_branch": None,
    "git_run_tag": None,
    "git_commit_hash": None,
    "git_commit_source": None,
    "git_commit_author": None,
    "git_commit_timestamp": None,
    "host": None,
    "environment": None,
    "api_posted": 0,
    "api_posted_at": None,
    "api_retry_count": 0,
    "parent_run_id": None,
    "created_at": None,
    "updated_at": None,
}
END_RUN_FIELDS = (
    "status",
    "end_time",
    "duration_ms",
    "items_discovered",
    "items_succeeded",
    "items_failed",
    "input_summary",
    "output_summary",
    "error_summary",
    "metrics_json",
)


def now_iso() -> str:
    """The client's timestamp format: ``datetime.now(timezone.utc).isoformat()``."""
    return datetime.now(UTC).isoformat()


def encode(body: Any) -> bytes:
    """As ``requests`` sends ``json=``: stdlib defaults, ASCII only."""
    return json.dumps(body, allow_nan=False).encode()


class WireRun:
    """One run as the reference client holds it (its RunRecord) and the requests it makes."""

    def __init__(
        self,
        agent_name: str,
        job_type: str,
        *,
        run_id: str | None = None,
        trigger_type: str = "cli",
        **fields: Any,
    ) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.record: dict[str, Any] = {
            "run_id": run_id or f"{stamp}-{agent_name}-{uuid.uuid4().hex[:8]}",
            "agent_name": agent_name,
            "job_type": job_type,
            "trigger_type": trigger_type,
            "start_time": now_iso(),
            "event_id": str(uuid.uuid4()),
            **RECORD_DEFAULTS,
            "host": "agent-host-1",
        }
        for key, value in fields.items():
            assert key in self.record, key
            self.record[key] = value

    @property
    def event_id(self) -> str:
        return str(self.record["event_id"])

    def start_body(self) -> dict[str, Any]:
        """``POST /api/v1/runs``: the whole record, timestamps filled, record_type added."""
        body = {**self.record, "record_type": "run"}
        stamp = now_iso()
        body["created_at"] = body["created_at"] or stamp
        body["updated_at"] = body["updated_at"] or stamp
        return body

    def set_metrics(self, **values: Any) -> None:
        """``RunContext.set_metrics``: only sets the record (sent at end_run)."""
        for key, value in values.items():
            if key in self.record:
                self.record[key] = value

    def end_body(self, status: str = "success", **values: Any) -> dict[str, Any]:
        """``end_run``'s PATCH body (the record is updated first, as the client does)."""
        end = datetime.now(UTC)
        self.record["end_time"] = end.isoformat()
        self.record["status"] = status
        start = datetime.fromisoformat(self.record["start_time"])
        self.record["duration_ms"] = int((end - start).total_seconds() * 1000)
        self.set_metrics(**values)
        body = {key: self.record[key] for key in END_RUN_FIELDS}
        body = {key: value for key, value in body.items() if value is not None}
        body["updated_at"] = now_iso()
        return body


def associate_body(
    commit_hash: str, source: str, author: str | None = None, timestamp: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"commit_hash": commit_hash, "commit_source": source}
    if author:
        body["commit_author"] = author
    if timestamp:
        body["commit_timestamp"] = timestamp
    return body


def client_fallback(kind: str, status: int | None, body: Any) -> str | None:
    """Why the reference client would NOT count this answer as delivered (buffering the run
    locally, or falling back to its database path); None when it counts it as delivered.

    post: 200/201 with a ``status`` key (it reads ``result['status']``); anything else
    ends in its buffer. patch and associate: exactly 200 (a 202 is neither success nor
    an HTTP error to it: it retries, then raises "unavailable" and buffers). batch:
    200/201 with ``inserted``, ``duplicates`` and ``errors``.
    """
    if status is None:
        return "no answer"
    if kind == "post":
        if status not in (200, 201):
            return f"POST answered {status}"
        if not isinstance(body, dict) or "status" not in body:
            return "POST answer has no 'status'"
        return None
    if kind in ("patch", "associate"):
        return None if status == 200 else f"{kind} answered {status}"
    if kind == "batch":
        if status not in (200, 201):
            return f"batch answered {status}"
        if not isinstance(body, dict) or not {"inserted", "duplicates", "errors"} <= set(body):
            return "batch answer lacks inserted/duplicates/errors"
        return None
    raise ValueError(kind)
