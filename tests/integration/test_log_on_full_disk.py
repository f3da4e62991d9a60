"""Both daemons with their log on a full disk (stdout on /dev/full: every write fails with
ENOSPC). They used to stop at their first start-up line, and a running server whose log
disk filled answered 500 to writes it had already committed (the access line comes after
the handler). Now the log lines are dropped and everything else works: a run goes agent ->
spoold -> server, bad input still gets its 4xx, and both stop cleanly."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from daemons import start_server, start_spoold

from server.runtime.logs import LossyStream

pytestmark = pytest.mark.integration

FULL = Path("/dev/full")


def call(method: str, url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
def test_both_daemons_serve_with_their_log_on_a_full_disk(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"TELEMETRY_LOG_LEVEL": "DEBUG"}, stdout=FULL)
    try:
        spoold = start_spoold(
            tmp_path,
            server.url,
            env={"SPOOLD_LOG_LEVEL": "DEBUG", "SPOOLD_MIN_FREE_DISK_MB": "0"},
            stdout=FULL,
        )
        try:
            event_id = str(uuid.uuid4())
            run = {
                "event_id": event_id,
                "run_id": "r-full",
                "agent_name": "full-disk-agent",
                "job_type": "j",
                "status": "running",
                "start_time": "2026-01-12T10:30:00Z",
            }
            assert call("POST", spoold.url + "/api/v1/runs", run) == (
                201,
                {"status": "created", "event_id": event_id, "run_id": "r-full"},
            )
            status, _ = call(
                "PATCH", spoold.url + f"/api/v1/runs/{event_id}", {"status": "success"}
            )
            assert status in (200, 202)
            assert call("POST", spoold.url + "/api/v1/runs", raw=b"{")[0] == 400
            assert call("POST", server.url + "/api/v1/runs", raw=b"{")[0] == 400
            stored: Any = None
            for _ in range(200):  # delivered within 20 s
                status, stored = call("GET", server.url + f"/api/v1/runs/{event_id}")
                if status == 200 and stored["status"] == "success":
                    break
                time.sleep(0.1)
            assert stored["status"] == "success"
            assert spoold.stop() == 0
        finally:
            spoold.stop()
        assert server.stop() == 0
    finally:
        server.stop()
    for daemon in (server, spoold):
        assert "Traceback" not in daemon.log()  # stderr: nothing went wrong meanwhile


class FailingThenWorking(io.BytesIO):
    """Refuses the first ``failures`` writes (ENOSPC), then accepts."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def write(self, data: Any) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        return super().write(data)


def test_dropped_lines_are_counted_and_reported_by_the_next_line() -> None:
    raw = FailingThenWorking(failures=3)
    stream = LossyStream(raw)
    for i in range(3):
        assert stream.write(b'{"n":%d}\n' % i) == 0
    assert stream.dropped == 3
    stream.write(b'{"n":3}\n')
    stream.flush()
    first, second = raw.getvalue().splitlines()
    dropped = json.loads(first)
    assert (dropped["event"], dropped["count"]) == ("log_lines_dropped", 3)
    assert json.loads(second) == {"n": 3}
    assert stream.dropped == 0


def test_a_closed_stream_or_a_failed_flush_never_raises() -> None:
    raw = io.BytesIO()
    stream = LossyStream(raw)
    raw.close()
    assert stream.write(b"x\n") == 0
    stream.flush()
    assert stream.dropped == 2  # the line, and its flush
