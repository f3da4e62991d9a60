"""A small fleet for the dashboard tests, seeded through the real API: skewed agents and
job types, a failing streak overnight, a silent agent, an overdue run, parents and
children, and hostile strings (HTML, URL metacharacters, unicode) in names and ids."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

XSS_AGENT = "<img src=x onerror=alert(1)>"
XSS_JOB = '"><svg onload=alert(2)>'
XSS_ERROR = '<b>boom</b> & "quotes" <script>alert(3)</script>'
#: An event_id full of URL metacharacters and unicode ("/" is refused by the API).
HOSTILE_EVENT_ID = "evt <x>?a=1&b=%2F #frag ünï 🚀"
UNICODE_AGENT = "агент-δ 🚀"
FAILING_AGENT = "alpha-crawler"
FAILING_JOB = "crawl"
FAILING_ERROR = "HTTP 503 from upstream <api.example>"
SILENT_AGENT = "gamma-indexer"
STALE_EVENT_ID = "stale-run-1"
PARENT_RUN_ID = "etl-parent-run"
CHILD_EVENT_ID = "child-load-1"
RETRY_EVENT_ID = "etl-retry-1"


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Fleet:
    now: datetime
    creates: list[dict[str, Any]] = field(default_factory=list)
    upserts: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **run: Any) -> dict[str, Any]:
        run.setdefault("event_id", f"e-{len(self.creates):04d}")
        run.setdefault("run_id", f"r-{len(self.creates):04d}")
        self.creates.append(run)
        return run

    def count(self, **match: Any) -> int:
        return sum(all(run.get(k) == v for k, v in match.items()) for run in self.creates)


def finished(start: datetime, seconds: float, **fields: Any) -> dict[str, Any]:
    return {
        "start_time": iso(start),
        "created_at": iso(start + timedelta(seconds=1)),  # recorded as it started
        "end_time": iso(start + timedelta(seconds=seconds)),
        "duration_ms": int(seconds * 1000),
        **fields,
    }


def build_fleet(now: datetime | None = None) -> Fleet:
    """The runs, relative to ``now`` (recorded now: start_time carries the history)."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    fleet = Fleet(now)
    # alpha-crawler: hourly crawls, fine until the last four (overnight) failed.
    for hours in range(30, 0, -1):
        failing = hours <= 4
        fleet.add(
            agent_name=FAILING_AGENT,
            job_type=FAILING_JOB,
            status="failure" if failing else "success",
            error_summary=FAILING_ERROR if failing else None,
            items_discovered=120,
            items_succeeded=0 if failing else 118,
            items_failed=120 if failing else 2,
            git_repo="https://github.com/example-org/crawler",
            git_commit_hash="0123456789abcdef0123456789abcdef01234567",
            git_branch="main",
            host="worker-01",
            **finished(now - timedelta(hours=hours), 40 + (hours % 7) * 8),
        )
    # beta-etl: nightly, slowly getting slower; yesterday's was partial.
    for days in range(10, 0, -1):
        fleet.add(
            agent_name="beta-etl",
            job_type="nightly-etl",
            status="partial" if days == 1 else "success",
            metrics_json={"rows": 1000 * days, "tables": ["a", "b"], "note": "<i>x</i>"},
            context_json={"attempt": 1, "schedule": "0 2 * * *"},
            **finished(now - timedelta(days=days, hours=-2), 1200 + 60 * (10 - days)),
        )
    parent = fleet.add(
        event_id="etl-parent-1",
        run_id=PARENT_RUN_ID,
        agent_name="beta-etl",
        job_type="nightly-etl",
        status="failure",
        error_summary="deadlock detected",
        **finished(now - timedelta(hours=3), 300),
    )
    fleet.add(
        event_id=RETRY_EVENT_ID,
        run_id=PARENT_RUN_ID,
        agent_name="beta-etl",
        job_type="nightly-etl",
        status="success",
        **finished(now - timedelta(hours=2), 280),
    )
    fleet.add(
        event_id=CHILD_EVENT_ID,
        agent_name="epsilon-loader",
        job_type="load",
        parent_run_id=parent["run_id"],
        status="success",
        **finished(now - timedelta(hours=2, minutes=30), 60),
    )
    # gamma-indexer: every 30 minutes for three days, silent for the last ten hours.
    for step in range(3 * 48, 20, -1):
        fleet.add(
            agent_name=SILENT_AGENT,
            job_type="index",
            status="success",
            **finished(now - timedelta(minutes=30 * step), 20 + step % 5),
        )
    # Hostile names: rendered as text, linked by their quoted form.
    fleet.add(
        event_id=HOSTILE_EVENT_ID,
        run_id="hostile <run>",
        agent_name=XSS_AGENT,
        job_type=XSS_JOB,
        status="failure",
        error_summary=XSS_ERROR,
        error_details="Stack of calls <script>alert(4)</script>",
        metrics_json={"<script>": "alert(5)"},
        git_repo="javascript:alert(6)",
        **finished(now - timedelta(hours=1), 5),
    )
    for hours in (5, 4):
        fleet.add(
            agent_name=UNICODE_AGENT,
            job_type=FAILING_JOB,
            status="success",
            **finished(now - timedelta(hours=hours), 33),
        )
    # An overdue run: running, its own 60 s allowance, last heard from two hours ago.
    fleet.upserts.append(
        {
            "event_id": STALE_EVENT_ID,
            "seen_at": iso(now - timedelta(hours=2)),
            "create": {
                "event_id": STALE_EVENT_ID,
                "run_id": "stale-run",
                "agent_name": "delta-worker",
                "job_type": FAILING_JOB,
                "status": "running",
                "heartbeat_timeout_s": 60,
                "start_time": iso(now - timedelta(hours=2, minutes=5)),
                "created_at": iso(now - timedelta(hours=2, minutes=5)),
            },
        }
    )
    return fleet


def post_json(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def seed_over_http(base_url: str, fleet: Fleet, headers: dict[str, str] | None = None) -> None:
    """POST the fleet to a live server (batches), insisting every run was stored."""
    for path, items, key in (
        ("/api/v1/runs/batch", fleet.creates, "inserted"),
        ("/api/v1/runs/batch?mode=upsert", fleet.upserts, "inserted"),
    ):
        request = urllib.request.Request(
            base_url + path,
            data=json.dumps(items).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer[key] == len(items), answer
        assert not answer["errors"], answer
