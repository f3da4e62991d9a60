"""The real daemons for the schemathesis runs, each loaded from its own ``/openapi.json``.

One telemetry-server subprocess on a temporary database (and one on PostgreSQL, the same
fuzzing run against it: ``fuzzed_server``), one spoold subprocess with
that server as upstream, and one spoold whose upstream is a closed port on 127.0.0.1
(the server down). Each is started once per session, and stopped by PID.
"""

from __future__ import annotations

import json
import signal
import string
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pg_cluster
import pytest

_INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

from daemons import Daemon, free_port, start  # noqa: E402

SERVER_ENV = {
    "TELEMETRY_DB_SYNCHRONOUS": "OFF",
    "TELEMETRY_LOG_LEVEL": "WARNING",
    "TELEMETRY_SHUTDOWN_TIMEOUT_S": "2",
}
SPOOLD_ENV = {
    "SPOOLD_BACKOFF_BASE_S": "0.05",
    "SPOOLD_BACKOFF_CAP_S": "0.5",
    "SPOOLD_SHUTDOWN_DEADLINE_S": "2",
    "SPOOLD_LOOKUP_TIMEOUT_S": "2",
    "SPOOLD_MIN_FREE_DISK_MB": "0",
    "SPOOLD_LOG_LEVEL": "WARNING",
}


@pytest.fixture(scope="session")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="session")
def server_daemon(fuzz_dir: Path) -> Iterator[Daemon]:
    """The real telemetry-server, default settings (no auth, no rate limit)."""
    port = free_port()
    daemon = start(
        "server",
        ["--port", str(port), "--db", str(fuzz_dir / "server.sqlite")],
        port=port,
        workdir=fuzz_dir,
        env=SERVER_ENV,
    )
    try:
        seed_runs(daemon)
        yield daemon
    finally:
        daemon.stop(signal.SIGTERM)


@pytest.fixture(scope="session")
def pg_server_daemon(fuzz_dir: Path, postgres_cluster: pg_cluster.Cluster) -> Iterator[Daemon]:
    """The real telemetry-server on PostgreSQL (TELEMETRY_DATABASE_URL: a fresh database
    of the session's cluster), default settings otherwise."""
    name = postgres_cluster.new_database("fuzz")
    port = free_port()
    try:
        daemon = start(
            "server",
            ["--port", str(port), "--db", str(fuzz_dir / "unused.sqlite")],
            port=port,
            workdir=fuzz_dir,
            env={**SERVER_ENV, "TELEMETRY_DATABASE_URL": postgres_cluster.url(name)},
        )
        try:
            seed_runs(daemon)
            yield daemon
        finally:
            daemon.stop(signal.SIGTERM)
    finally:
        postgres_cluster.drop_database(name)


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def fuzzed_server(request: pytest.FixtureRequest) -> Daemon:
    """The server the schemathesis runs drive, on each backend: the same document, the
    same hostile input, the same promises (no 5xx, every answer documented)."""
    name = "server_daemon" if request.param == "sqlite" else "pg_server_daemon"
    daemon: Daemon = request.getfixturevalue(name)
    return daemon


def seed_runs(daemon: Daemon) -> None:
    """Runs whose event_ids are the short strings generators often draw, so that
    updates and reads by id also reach stored runs, not only 404s."""
    ids = [c for c in string.printable if c not in "/" + string.whitespace] + ["00", "AA"]
    body = [
        {
            "event_id": event_id,
            "run_id": f"seed-{index}",
            "agent_name": "fuzz-seed",
            "job_type": "seed",
            "start_time": "2026-01-12T10:30:00Z",
            "git_repo": "https://github.com/example/repo",
        }
        for index, event_id in enumerate(ids)
    ]
    request = urllib.request.Request(
        f"{daemon.url}/api/v1/runs/batch",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["inserted"] == len(ids), answer


def _start_spoold(workdir: Path, upstream: str, name: str) -> Daemon:
    port = free_port()
    return start(
        "spoold",
        ["serve", "--port", str(port), "--upstream", upstream, "--spool-dir", str(workdir / name)],
        port=port,
        workdir=workdir,
        env=SPOOLD_ENV,
        ready_path="/openapi.json",
    )


@pytest.fixture(scope="session")
def spoold_daemon(fuzz_dir: Path, server_daemon: Daemon) -> Iterator[Daemon]:
    """spoold forwarding to the real server."""
    daemon = _start_spoold(fuzz_dir, server_daemon.url, "spool-up")
    try:
        yield daemon
    finally:
        daemon.stop(signal.SIGTERM)


@pytest.fixture(scope="session")
def spoold_alone(fuzz_dir: Path) -> Iterator[Daemon]:
    """spoold whose server is down: its upstream is a port nothing listens on."""
    daemon = _start_spoold(fuzz_dir, f"http://127.0.0.1:{free_port()}", "spool-down")
    try:
        yield daemon
    finally:
        daemon.stop(signal.SIGTERM)
