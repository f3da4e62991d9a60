"""The reference implementation's client and HTTP tests, against the real daemons (issue 8).

Part 1 sends the wire bodies of ``TelemetryClient``'s documented patterns (``reference_wire``)
to a real spoold whose server is DOWN: every answer must be one the client counts as
delivered (else it would fall back to its local buffer). Then the server starts and every
run must reach it with its final status, counters, summaries and error text.

Part 2 re-expresses each scenario of the reference's HTTP contract tests
(``tests/contract/http_api/test_http_contracts.py``, ``tests/test_api_url_endpoints.py``)
and runs it against BOTH daemons: the server directly, and spoold with the server up.
Where the reference's test disagrees with the guide (and with the reference server
itself: a ``{"runs": [...]}`` batch envelope, an alias status on PATCH), the scenario
asserts the guide's answer and says so.

Real processes on 127.0.0.1, stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import pytest
from daemons import Daemon, free_port, start
from reference_wire import WireRun, associate_body, client_fallback, encode

pytestmark = pytest.mark.integration
T = TypeVar("T")

SPOOLD_ENV = {
    "SPOOLD_BACKOFF_BASE_S": "0.05",
    "SPOOLD_BACKOFF_CAP_S": "0.3",
    "SPOOLD_SHUTDOWN_DEADLINE_S": "2",
    "SPOOLD_UPSTREAM_TIMEOUT_S": "2",
    "SPOOLD_LOOKUP_TIMEOUT_S": "1",
    "SPOOLD_MIN_FREE_DISK_MB": "0",
    "SPOOLD_LOG_LEVEL": "WARNING",
}
SERVER_ENV = {
    "TELEMETRY_DB_SYNCHRONOUS": "NORMAL",
    "TELEMETRY_LOG_LEVEL": "WARNING",
    "TELEMETRY_SHUTDOWN_TIMEOUT_S": "2",
}


# ---- plumbing ------------------------------------------------------------------------------


def http(
    method: str, url: str, body: Any = None, *, params: dict[str, Any] | None = None
) -> tuple[int | None, Any]:
    """One request as ``requests`` makes it (JSON, ASCII-escaped); (None, None) if unanswered."""
    if params:
        url += "?" + urlencode(params)
    data = None if body is None else encode(body)
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return int(exc.code), json.loads(raw or b"null")
        except ValueError:
            return int(exc.code), raw[:200]
    except (OSError, ValueError):
        return None, None


def wait_for(check: Callable[[], T | None], what: str, timeout_s: float = 60.0) -> T:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.05) + 2):
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def run_path(event_id: str, suffix: str = "") -> str:
    return "/api/v1/runs/" + quote(event_id, safe="") + suffix


def start_server(workdir: Path, port: int) -> Daemon:
    return start(
        "server",
        ["--port", str(port), "--db", str(workdir / "central.sqlite")],
        port=port,
        workdir=workdir,
        env=SERVER_ENV,
    )


def start_spoold(workdir: Path, port: int, upstream_port: int) -> Daemon:
    return start(
        "spoold",
        ["serve", "--port", str(port), "--upstream", f"http://127.0.0.1:{upstream_port}",
         "--spool-dir", str(workdir / "spool")],
        port=port,
        workdir=workdir,
        env=SPOOLD_ENV,
        ready_path="/openapi.json",
    )  # fmt: skip


def drained(spoold: Daemon, timeout_s: float = 60.0) -> dict[str, Any]:
    """spoold's /health once its queue is empty and its counters add up."""

    def check() -> dict[str, Any] | None:
        status, body = http("GET", spoold.url + "/health")
        if status is None or not isinstance(body, dict):
            return None
        counters = body["counters"]
        done = counters["queued"] == 0 and counters["accepted"] == (
            counters["forwarded"] + counters["dead_lettered"]
        )
        return body if done and body["spool"]["depth"] == 0 else None

    return wait_for(check, f"spoold {spoold.url} to drain", timeout_s)


# ---- part 1: the client's patterns, server down then up ----------------------------------------


@dataclass
class Expected:
    wire: WireRun
    status: str
    fields: dict[str, Any]


def test_reference_client_patterns_server_down_then_up(tmp_path: Path) -> None:
    server_port = free_port()
    spoold = start_spoold(tmp_path, free_port(), server_port)
    server: Daemon | None = None
    answers: list[tuple[str, str, int | None, Any]] = []

    def send(kind: str, method: str, path: str, body: Any) -> None:
        status, answer = http(method, spoold.url + path, body)
        answers.append((kind, path, status, answer))

    try:
        expected: list[Expected] = []

        # track_run, block succeeds, metrics set through ctx.set_metrics (metrics_json as str)
        for index in range(26):
            wire = WireRun("seo-agent", "crawl", product="words", git_repo="https://github.com/o/r",
                           git_branch="main")  # fmt: skip
            send("post", "POST", "/api/v1/runs", wire.start_body())
            wire.set_metrics(
                items_discovered=10 + index,
                items_succeeded=9 + index,
                items_failed=1,
                input_summary=f"batch {index}",
                output_summary=f"wrote {9 + index} pages",
                metrics_json=json.dumps({"tokens": index, "cost": 0.5}),
            )
            send("patch", "PATCH", run_path(wire.event_id), wire.end_body("success"))
            fields = {"items_discovered": 10 + index, "items_succeeded": 9 + index,
                      "items_failed": 1, "input_summary": f"batch {index}",
                      "output_summary": f"wrote {9 + index} pages",
                      "metrics_json": {"tokens": index, "cost": 0.5}}  # fmt: skip
            expected.append(Expected(wire, "success", fields))

        # track_run, block raises: end_run(status="failure", error_summary="<Type>: <msg>")
        crash = WireRun("seo-agent", "crawl")
        send("post", "POST", "/api/v1/runs", crash.start_body())
        crash.set_metrics(items_discovered=4, items_failed=4)
        body = crash.end_body("failure", error_summary="ValueError: page 3 is not HTML")
        send("patch", "PATCH", run_path(crash.event_id), body)
        expected.append(Expected(crash, "failure", {"items_failed": 4,
                        "error_summary": "ValueError: page 3 is not HTML"}))  # fmt: skip

        # start_run with a custom run_id and Unicode names; end_run with kwargs; then
        # associate_commit with a non-hex hash (the reference's own test value)
        name = "\U0001f469\u200d\U0001f4bb translator"
        manual = WireRun(name, "traduction\u00a0rapide", run_id="nuit-\u00e9t\u00e9-42",
                         metrics_json=None, context_json='{"locale": "fr"}')  # fmt: skip
        send("post", "POST", "/api/v1/runs", manual.start_body())
        end = manual.end_body("partial", items_succeeded=7, items_failed=2,
                              metrics_json={"pages": 9})  # fmt: skip
        send("patch", "PATCH", run_path(manual.event_id), end)
        commit = associate_body("abc123456789manual", "manual", "Dev <dev@example.com>",
                                "2026-01-12T10:35:00+00:00")  # fmt: skip
        send("associate", "POST", run_path(manual.event_id, "/associate-commit"), commit)
        expected.append(Expected(manual, "partial", {"items_succeeded": 7, "items_failed": 2,
                        "metrics_json": {"pages": 9}, "context_json": {"locale": "fr"},
                        "agent_name": name, "job_type": "traduction\u00a0rapide",
                        "run_id": "nuit-\u00e9t\u00e9-42",
                        "git_commit_hash": "abc123456789manual",
                        "git_commit_source": "manual",
                        "git_commit_author": "Dev <dev@example.com>"}))  # fmt: skip

        # a run carrying a non-hex commit hash from the start (as 789xyz123 in the reference)
        tagged = WireRun("ci-agent", "build", git_repo="https://bitbucket.org/owner/repo",
                         git_commit_hash="789xyz123")  # fmt: skip
        send("post", "POST", "/api/v1/runs", tagged.start_body())
        send("patch", "PATCH", run_path(tagged.event_id), tagged.end_body("success"))
        expected.append(Expected(tagged, "success", {"git_commit_hash": "789xyz123"}))

        # the buffer's sync worker: a batch of whole records, in their final state
        buffered = []
        for index in range(3):
            wire = WireRun("buffered-agent", "sync", metrics_json=json.dumps({"n": index}))
            wire.end_body("success", items_succeeded=index)
            buffered.append(wire)
            expected.append(Expected(wire, "success", {"items_succeeded": index,
                            "metrics_json": {"n": index}}))  # fmt: skip
        send("batch", "POST", "/api/v1/runs/batch", [w.start_body() for w in buffered])

        refusals = [
            (kind, path, status, answer)
            for kind, path, status, answer in answers
            if client_fallback(kind, status, answer) is not None
        ]
        assert refusals == [], "the reference client would have fallen back to its buffer"
        assert len(answers) == 26 * 2 + 2 + 3 + 2 + 1

        server = start_server(tmp_path, server_port)
        health = drained(spoold)
        assert health["counters"]["dead_lettered"] == 0

        for item in expected:
            status, run = http("GET", server.url + run_path(item.wire.event_id))
            assert status == 200, (item.wire.event_id, run)
            assert run["status"] == item.status, run
            # end_run's own end_time and duration, as the client computed them
            end = datetime.fromisoformat(item.wire.record["end_time"])
            assert datetime.fromisoformat(run["end_time"]) == end, run
            assert run["duration_ms"] == item.wire.record["duration_ms"], run
            assert (run["run_id"], run["agent_name"], run["job_type"]) == (
                item.wire.record["run_id"], item.wire.record["agent_name"],
                item.wire.record["job_type"],
            )  # fmt: skip
            for key, value in item.fields.items():
                assert run[key] == value, (key, run)
        assert sum(1 for _ in expected) == 26 + 1 + 1 + 1 + 3
        status, metrics = http("GET", server.url + "/metrics")
        assert metrics["total_runs"] == len(expected)  # each run once, none left behind
        status, still_running = http(
            "GET", server.url + "/api/v1/runs", params={"status": "running"}
        )
        assert (status, still_running) == (200, [])
        status, link = http("GET", server.url + run_path(tagged.event_id, "/commit-url"))
        assert link["commit_url"] == "https://bitbucket.org/owner/repo/commits/789xyz123"
    finally:
        spoold.stop(signal.SIGTERM)
        if server is not None:
            server.stop(signal.SIGTERM)


# ---- part 2: the reference's HTTP contract scenarios, against both daemons ----------------------


@dataclass
class Stack:
    server: Daemon
    spoold: Daemon


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("reference-contract")
    server_port = free_port()
    server = start_server(workdir, server_port)
    try:
        spoold = start_spoold(workdir, free_port(), server_port)
    except BaseException:
        server.stop()
        raise
    try:
        yield Stack(server, spoold)
    finally:
        spoold.stop()
        server.stop()


@dataclass
class Target:
    """One daemon under test; ``settle`` waits until what was written is on the server."""

    daemon: Daemon
    sidecar: bool

    def call(
        self, method: str, path: str, body: Any = None, **params: Any
    ) -> tuple[int | None, Any]:
        return http(method, self.daemon.url + path, body, params=params or None)

    def settle(self) -> None:
        if self.sidecar:
            drained(self.daemon, timeout_s=30)


@pytest.fixture(params=["server", "spoold"])
def target(request: pytest.FixtureRequest, stack: Stack) -> Target:
    if request.param == "server":
        return Target(stack.server, sidecar=False)
    return Target(stack.spoold, sidecar=True)


def contract_run(**overrides: Any) -> dict[str, Any]:
    """A full create body, as the reference's contract helpers build one."""
    event_id = str(uuid.uuid4())
    body = {
        "event_id": event_id,
        "run_id": f"test-{event_id[:8]}",
        "agent_name": "contract-test-agent",
        "job_type": "contract-test-job",
        "start_time": datetime.now(UTC).isoformat(),
        "status": "running",
        "duration_ms": 0,
        "items_discovered": 0,
        "items_succeeded": 0,
        "items_failed": 0,
        "items_skipped": 0,
        "trigger_type": "test",
        "environment": "test",
    }
    body.update(overrides)
    return body


def created(target: Target, body: dict[str, Any]) -> None:
    status, answer = target.call("POST", "/api/v1/runs", body)
    assert status == 201, answer
    assert answer == {"status": "created", "event_id": body["event_id"], "run_id": body["run_id"]}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# HTTP-1 create


def test_create_minimal_payload(target: Target) -> None:
    body = contract_run()
    minimal = {
        key: body[key] for key in ("event_id", "run_id", "agent_name", "job_type", "start_time")
    }
    created(target, minimal)


def test_create_is_idempotent(target: Target) -> None:
    """The reference's docstring says "200 duplicate"; its server and the guide answer 201."""
    body = contract_run(status="completed")
    created(target, body)
    status, answer = target.call("POST", "/api/v1/runs", body)
    assert (status, answer["status"], answer["event_id"]) == (201, "duplicate", body["event_id"])


@pytest.mark.parametrize("missing", ["event_id", "run_id", "agent_name", "job_type", "start_time"])
def test_create_without_a_required_field_is_422(target: Target, missing: str) -> None:
    body = contract_run()
    del body[missing]
    status, answer = target.call("POST", "/api/v1/runs", body)
    assert status == 422
    assert missing in json.dumps(answer["detail"])


# HTTP-2 query


def test_query_without_filters_is_newest_first(target: Target) -> None:
    created(target, contract_run())
    target.settle()
    status, runs = target.call("GET", "/api/v1/runs")
    assert status == 200
    assert isinstance(runs, list)
    assert runs
    stamps = [run["created_at"] for run in runs]
    assert stamps == sorted(stamps, reverse=True)


def test_query_pages_do_not_overlap(target: Target) -> None:
    agent = unique("pagination")
    bodies = [contract_run(agent_name=agent, job_type=f"pagination-test-{i}") for i in range(15)]
    for body in bodies:
        created(target, body)
    target.settle()
    _, first = target.call("GET", "/api/v1/runs", agent_name=agent, limit=10, offset=0)
    _, second = target.call("GET", "/api/v1/runs", agent_name=agent, limit=10, offset=10)
    first_ids = {run["event_id"] for run in first}
    second_ids = {run["event_id"] for run in second}
    assert (len(first_ids), len(second_ids)) == (10, 5)
    assert first_ids | second_ids == {body["event_id"] for body in bodies}


def test_query_filters_and_status_aliases(target: Target) -> None:
    agent, other = unique("filter-agent"), unique("other-agent")
    for body in (contract_run(agent_name=agent, status="completed"),
                 contract_run(agent_name=agent, status="completed"),
                 contract_run(agent_name=agent, status="failed"),
                 contract_run(agent_name=other, status="completed")):  # fmt: skip
        created(target, body)
    target.settle()
    _, by_agent = target.call("GET", "/api/v1/runs", agent_name=agent)
    assert len(by_agent) == 3
    assert {run["agent_name"] for run in by_agent} == {agent}
    _, by_status = target.call("GET", "/api/v1/runs", status="completed", limit=1000)
    assert by_status
    assert {run["status"] for run in by_status} == {"success"}
    _, both = target.call("GET", "/api/v1/runs", agent_name=agent, status="completed")
    assert len(both) == 2
    assert {(r["agent_name"], r["status"]) for r in both} == {(agent, "success")}


# HTTP-3 update


def test_partial_update_changes_only_the_given_fields(target: Target) -> None:
    """The reference's test PATCHes the alias "completed"; the guide (and the reference
    server) accept canonical statuses only on PATCH, so the alias is a 422 here too."""
    body = contract_run(agent_name="contract-test-patch", job_type="patch-test")
    created(target, body)
    path = run_path(body["event_id"])
    alias, _ = target.call("PATCH", path, {"status": "completed"})
    assert alias == 422
    update = {"status": "success", "end_time": datetime.now(UTC).isoformat(), "duration_ms": 5000}
    status, answer = target.call("PATCH", path, update)
    assert status == 200
    assert answer["fields_updated"] == ["status", "end_time", "duration_ms"]
    _, run = target.call("GET", path)
    assert (run["status"], run["duration_ms"], run["job_type"]) == ("success", 5000, "patch-test")


# HTTP-4 health, HTTP-5 metrics


def test_health(target: Target) -> None:
    status, answer = target.call("GET", "/health")
    assert status == 200
    assert answer["status"] == "ok"
    assert "version" in answer


def test_metrics(target: Target) -> None:
    status, answer = target.call("GET", "/metrics")
    assert status == 200
    assert isinstance(answer["total_runs"], int)
    assert answer["total_runs"] >= 0
    assert isinstance(answer["agents"], dict)
    assert isinstance(answer["recent_24h"], int)


# HTTP-6 batch


def test_batch_create_and_duplicates(target: Target) -> None:
    """The guide's body is a bare array (the reference's test wraps it in {"runs": ...},
    which the reference server refuses with 422 as well)."""
    bodies = [contract_run() for _ in range(5)]
    status, answer = target.call("POST", "/api/v1/runs/batch", bodies)
    assert status == 200
    assert (answer["inserted"], answer["duplicates"], answer["errors"], answer["total"]) == (
        5, 0, [], 5,
    )  # fmt: skip
    for body in bodies:
        assert target.call("GET", run_path(body["event_id"]))[0] == 200
    status, again = target.call("POST", "/api/v1/runs/batch", bodies[:2])
    assert (status, again["inserted"], again["duplicates"]) == (200, 0, 2)
    wrapped, _ = target.call("POST", "/api/v1/runs/batch", {"runs": bodies})
    assert wrapped == 422


# GT-03 git commit fields


@pytest.mark.parametrize("source", ["manual", "llm", "ci"])
def test_post_with_each_git_commit_source(target: Target, source: str) -> None:
    created(target, contract_run(git_commit_source=source, status="success",
                             git_commit_author="Claude <noreply@anthropic.com>",
                             git_commit_timestamp="2026-01-01T12:00:00Z"))  # fmt: skip


def test_post_with_an_invalid_git_commit_source_is_422(target: Target) -> None:
    status, answer = target.call(
        "POST", "/api/v1/runs", contract_run(git_commit_source="invalid_value")
    )
    assert status == 422
    assert "git_commit_source" in json.dumps(answer).lower()


def test_patch_git_commit_fields(target: Target) -> None:
    body = contract_run()
    created(target, body)
    patch = {"git_commit_source": "llm", "git_commit_author": "Claude Sonnet <noreply@anthropic.com>",
             "git_commit_timestamp": "2026-01-01T14:30:00Z", "status": "success"}  # fmt: skip
    assert target.call("PATCH", run_path(body["event_id"]), patch)[0] == 200
    bad, _ = target.call("PATCH", run_path(body["event_id"]), {"git_commit_source": "automated"})
    assert bad == 422


# GT-04 associate-commit


def test_associate_commit_success(target: Target) -> None:
    body = contract_run(status="success")
    created(target, body)
    commit = associate_body("abc1234567890abcdef", "llm", "Claude Code <noreply@anthropic.com>",
                            "2026-01-02T10:00:00Z")  # fmt: skip
    status, answer = target.call("POST", run_path(body["event_id"], "/associate-commit"), commit)
    assert status == 200
    assert (answer["status"], answer["event_id"], answer["commit_hash"]) == (
        "success", body["event_id"], "abc1234567890abcdef",
    )  # fmt: skip
    _, run = target.call("GET", run_path(body["event_id"]))
    assert run["git_commit_hash"] == "abc1234567890abcdef"
    assert (run["git_commit_source"], run["git_commit_author"]) == (
        "llm", "Claude Code <noreply@anthropic.com>",
    )  # fmt: skip
    stamp = datetime.fromisoformat(run["git_commit_timestamp"])  # the same instant, canonical
    assert stamp == datetime(2026, 1, 2, 10, 0, tzinfo=UTC)


def test_associate_commit_run_not_found(target: Target) -> None:
    status, answer = target.call(
        "POST", run_path(unique("nonexistent-event-id"), "/associate-commit"),
        {"commit_hash": "abc1234567890", "commit_source": "manual"},
    )  # fmt: skip
    assert status == 404
    assert "not found" in answer["detail"].lower()


def test_associate_commit_invalid_source(target: Target) -> None:
    body = contract_run(status="success")
    created(target, body)
    status, answer = target.call("POST", run_path(body["event_id"], "/associate-commit"),
                                 {"commit_hash": "abc1234567890", "commit_source": "automated"})  # fmt: skip
    assert status == 422
    assert "commit_source" in json.dumps(answer).lower()


@pytest.mark.parametrize("source", ["manual", "llm", "ci"])
def test_associate_commit_each_source_with_a_non_hex_hash(target: Target, source: str) -> None:
    """One of the issue's 7 failures: the reference sends "abc123456789<source>"."""
    body = contract_run(status="success")
    created(target, body)
    commit = {"commit_hash": f"abc123456789{source}", "commit_source": source}
    status, answer = target.call("POST", run_path(body["event_id"], "/associate-commit"), commit)
    assert status == 200, answer
    assert answer["commit_hash"] == f"abc123456789{source}"


def test_associate_commit_minimal_payload(target: Target) -> None:
    body = contract_run(status="success")
    created(target, body)
    status, answer = target.call("POST", run_path(body["event_id"], "/associate-commit"),
                                 {"commit_hash": "def456789", "commit_source": "ci"})  # fmt: skip
    assert (status, answer["status"], answer["commit_hash"]) == (200, "success", "def456789")


# GT-02 and test_api_url_endpoints: commit and repository URLs

COMMIT_URLS = [
    ("https://github.com/owner/repo", "abc1234567890", "https://github.com/owner/repo/commit/abc1234567890"),
    ("https://gitlab.com/owner/repo", "def4567890abc", "https://gitlab.com/owner/repo/-/commit/def4567890abc"),
    ("git@github.com:owner/repo.git", "123abc456def", "https://github.com/owner/repo/commit/123abc456def"),
    ("git@github.com:owner/repo.git", "def4567890abc", "https://github.com/owner/repo/commit/def4567890abc"),
    ("https://gitlab.com/owner/repo", "123abc456def", "https://gitlab.com/owner/repo/-/commit/123abc456def"),
    # non-hex: among the 7 failures
    ("https://bitbucket.org/owner/repo", "789xyz123", "https://bitbucket.org/owner/repo/commits/789xyz123"),
    ("https://github.com/owner/repo", None, None),
    (None, None, None),
]  # fmt: skip


@pytest.mark.parametrize(("repo", "commit", "url"), COMMIT_URLS)
def test_commit_url(target: Target, repo: str | None, commit: str | None, url: str | None) -> None:
    body = contract_run(status="success", git_repo=repo, git_commit_hash=commit)
    created(target, body)
    status, answer = target.call("GET", run_path(body["event_id"], "/commit-url"))
    assert status == 200
    assert answer["commit_url"] == url


REPO_URLS = [
    # each with a short, non-hex or 3-character hash: among the 7 failures
    ("https://github.com/owner/repo.git", "any", "https://github.com/owner/repo"),
    ("https://github.com/owner/repo.git", "abc123", "https://github.com/owner/repo"),
    ("git@gitlab.com:owner/repo.git", "def456", "https://gitlab.com/owner/repo"),
    (None, None, None),
]


@pytest.mark.parametrize(("repo", "commit", "url"), REPO_URLS)
def test_repo_url(target: Target, repo: str | None, commit: str | None, url: str | None) -> None:
    body = contract_run(status="success", git_repo=repo, git_commit_hash=commit)
    created(target, body)
    status, answer = target.call("GET", run_path(body["event_id"], "/repo-url"))
    assert status == 200
    assert answer["repo_url"] == url


@pytest.mark.parametrize("suffix", ["/commit-url", "/repo-url"])
def test_url_endpoints_for_an_unknown_run_are_404(target: Target, suffix: str) -> None:
    status, answer = target.call("GET", run_path(unique("nonexistent-event-id"), suffix))
    assert status == 404
    assert "not found" in answer["detail"].lower()


@pytest.mark.parametrize("commit", ["testcommit789", "testcommit123", None])
def test_list_includes_commit_url_and_repo_url(target: Target, commit: str | None) -> None:
    """Two of the issue's 7 failures (non-hex hashes); the null case as the reference tests."""
    agent = unique("gt02-test-query-urls")
    repo = "https://github.com/test/repo" if commit else None
    body = contract_run(agent_name=agent, status="success", git_repo=repo, git_commit_hash=commit)
    created(target, body)
    target.settle()
    status, runs = target.call("GET", "/api/v1/runs", agent_name=agent, limit=1)
    assert status == 200
    assert [run["event_id"] for run in runs] == [body["event_id"]]
    expected_commit = f"https://github.com/test/repo/commit/{commit}" if commit else None
    assert runs[0]["commit_url"] == expected_commit
    assert runs[0]["repo_url"] == ("https://github.com/test/repo" if commit else None)
