"""schemathesis drives the real spoold from its own ``/openapi.json``, once with the
real server as its upstream and once with the server down.

With the server up: no 5xx, every answer documented, and everything spoold
acknowledged reaches the server (nothing dead-lettered). With the server down:
reads answer their documented 503, writes are still accepted (201, or 202
``queued`` for updates it cannot confirm), never another 5xx.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from daemons import Daemon
from fuzzing import (
    CONFORMANCE,
    QUICK_EXAMPLES,
    SLOW_EXAMPLES,
    fuzz_operation,
    labels,
    load,
    served_document,
)
from schemathesis import Response

from spoold.app import openapi_document

pytestmark = pytest.mark.integration

DOCUMENT = openapi_document()
SCHEMA = load(DOCUMENT)
DRAIN_TIMEOUT_S = 30.0


def _health(daemon: Daemon) -> dict[str, Any]:
    with urllib.request.urlopen(f"{daemon.url}/health", timeout=5) as response:
        return dict(json.loads(response.read()))


def test_fuzzed_document_is_the_served_one(spoold_daemon: Daemon) -> None:
    """The schema the cases come from is what spoold serves at /openapi.json."""
    assert served_document(spoold_daemon.url) == DOCUMENT


@pytest.mark.parametrize("operation", labels(DOCUMENT))
def test_spoold_answers_as_documented(operation: str, spoold_daemon: Daemon) -> None:
    """Bounded examples of one operation against spoold with the real server upstream."""
    assert fuzz_operation(SCHEMA, operation, spoold_daemon.url, examples=QUICK_EXAMPLES)


def test_spoold_delivered_everything_it_acknowledged(spoold_daemon: Daemon) -> None:
    """After the fuzzing, the queue drains to the server with nothing dead-lettered."""
    run = {
        "event_id": "fuzz-drain-check",
        "run_id": "fuzz-drain-check",
        "agent_name": "fuzz",
        "job_type": "drain-check",
        "start_time": "2026-01-12T10:30:00Z",
    }
    request = urllib.request.Request(
        f"{spoold_daemon.url}/api/v1/runs",
        data=json.dumps(run).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # one write even if run alone
        assert response.status == 201
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    health = _health(spoold_daemon)
    while health["counters"]["queued"] and time.monotonic() < deadline:
        time.sleep(0.1)
        health = _health(spoold_daemon)
    counters = health["counters"]
    assert counters["accepted"] > 0, counters
    assert counters["queued"] == 0, health
    assert counters["dead_lettered"] == 0, health
    assert counters["accepted"] == counters["forwarded"], counters


def _no_5xx_but_unreachable_reads(case: Any, response: Response) -> None:
    """With the server down only reads may fail, and only with 503 (server unreachable)."""
    if response.status_code >= 500:
        assert case.method == "GET", (case.method, case.formatted_path, response.text)
        assert response.status_code == 503, (case.formatted_path, response.text)
        assert response.headers.get("retry-after"), response.headers  # lower-cased keys


@pytest.mark.parametrize("operation", labels(DOCUMENT))
def test_spoold_with_server_down_answers_as_documented(
    operation: str, spoold_alone: Daemon
) -> None:
    """Bounded examples of one operation against spoold whose server is unreachable."""
    seen = fuzz_operation(
        SCHEMA,
        operation,
        spoold_alone.url,
        examples=QUICK_EXAMPLES,
        checks=CONFORMANCE,
        also=_no_5xx_but_unreachable_reads,
    )
    assert seen


@pytest.mark.slow
@pytest.mark.parametrize("operation", labels(DOCUMENT))
def test_spoold_answers_as_documented_larger_run(operation: str, spoold_daemon: Daemon) -> None:
    """The same checks with more examples per operation."""
    assert fuzz_operation(SCHEMA, operation, spoold_daemon.url, examples=SLOW_EXAMPLES)
