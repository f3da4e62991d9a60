"""Both daemons on either event loop (``*_EVENT_LOOP``): a run goes agent -> spoold ->
server and is read back, each daemon says which loop it runs in its listening line, and
stops cleanly on SIGTERM. A bad value, or uvloop asked for where it is missing, stops
the daemon at start-up with a message naming the variable."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from daemons import start_server, start_spoold
from ports import free_port

from server.config import SETTINGS as SERVER_SETTINGS
from server.config import ServerConfig
from server.runtime import event_loop
from server.runtime.settings import ConfigError, load
from spoold.config import SETTINGS as SPOOLD_SETTINGS
from spoold.config import SpooldConfig

pytestmark = pytest.mark.integration


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status), json.loads(response.read() or b"null")


def listening_line(log: str, name: str) -> dict[str, Any]:
    for line in log.splitlines():
        if f'"{name}_listening"' in line:
            found: dict[str, Any] = json.loads(line)
            return found
    raise AssertionError(f"no {name}_listening line in:\n{log}")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", None])
def test_a_run_goes_through_both_daemons_on_either_loop(
    tmp_path: Path, loop: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for inherited in ("TELEMETRY_EVENT_LOOP", "SPOOLD_EVENT_LOOP"):  # None: the default
        monkeypatch.delenv(inherited, raising=False)
    expected = loop or event_loop.resolve("auto")
    server_port, spoold_port = free_port(), free_port()
    server_env = {"TELEMETRY_LOG_LEVEL": "INFO"}
    spoold_env = {"SPOOLD_LOG_LEVEL": "INFO", "SPOOLD_MIN_FREE_DISK_MB": "0"}
    if loop is not None:
        server_env["TELEMETRY_EVENT_LOOP"] = loop
        spoold_env["SPOOLD_EVENT_LOOP"] = loop
    server = start_server(tmp_path, port=server_port, env=server_env)
    try:
        spoold = start_spoold(tmp_path, server.url, port=spoold_port, env=spoold_env)
        try:
            event_id = str(uuid.uuid4())
            run = {
                "event_id": event_id,
                "run_id": "r-1",
                "agent_name": "loop-agent",
                "job_type": "j",
                "status": "running",
                "start_time": "2026-01-12T10:30:00Z",
            }
            assert call("POST", spoold.url + "/api/v1/runs", run)[0] == 201
            assert call("PATCH", spoold.url + f"/api/v1/runs/{event_id}", {"status": "success"})[
                0
            ] in (200, 202)
            stored: Any = None
            for _ in range(200):  # delivered within 20 s
                status, stored = call("GET", server.url + "/api/v1/runs?agent_name=loop-agent")
                if status == 200 and stored and stored[0]["status"] == "success":
                    break
                time.sleep(0.1)
            assert stored
            assert stored[0]["event_id"] == event_id
            assert stored[0]["status"] == "success"
            assert spoold.stop() == 0
            assert listening_line(spoold.log(), "spoold")["event_loop"] == expected
        finally:
            spoold.stop()
        assert server.stop() == 0
        assert listening_line(server.log(), "server")["event_loop"] == expected
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("module", "args", "variable"),
    [
        ("server", ["--port", "1"], "TELEMETRY_EVENT_LOOP"),
        ("spoold", ["serve", "--port", "1"], "SPOOLD_EVENT_LOOP"),
    ],
)
def test_an_unknown_loop_stops_the_daemon_naming_the_variable(
    tmp_path: Path, module: str, args: list[str], variable: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        env={variable: "tokio", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert variable.encode() in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before any database or spool was made


def test_uvloop_asked_for_where_it_is_missing_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = event_loop.importlib.import_module

    def broken_uvloop(name: str, *args: object) -> object:  # missing, or built for elsewhere
        if name == "uvloop":
            raise ImportError("uvloop/loop.cpython-311-x86_64-linux-gnu.so: wrong ELF class")
        return real_import(name, *args)

    event_loop.uvloop_imports.cache_clear()
    monkeypatch.setattr(event_loop.importlib, "import_module", broken_uvloop)
    monkeypatch.setattr(event_loop, "uvloop_imports", event_loop.uvloop_imports.__wrapped__)
    assert event_loop.resolve("auto") == "asyncio"  # auto falls back quietly
    assert event_loop.resolve("asyncio") == "asyncio"
    with pytest.raises(event_loop.EventLoopUnavailable):
        event_loop.resolve("uvloop")
    with pytest.raises(ConfigError, match="TELEMETRY_EVENT_LOOP"):
        load(ServerConfig, SERVER_SETTINGS, {"TELEMETRY_EVENT_LOOP": "uvloop"}, {})
    with pytest.raises(ConfigError, match="SPOOLD_EVENT_LOOP"):
        load(SpooldConfig, SPOOLD_SETTINGS, {"SPOOLD_EVENT_LOOP": "uvloop"}, {})
    config = load(ServerConfig, SERVER_SETTINGS, {"TELEMETRY_EVENT_LOOP": "auto"}, {})
    assert config.event_loop == "auto"


def test_the_loop_run_returns_the_coroutines_result_on_each_loop() -> None:
    async def answer() -> str:
        import asyncio

        return type(asyncio.get_running_loop()).__module__.partition(".")[0]

    assert event_loop.run(answer(), "asyncio") == "asyncio"
    if event_loop.resolve("auto") == "uvloop":
        assert event_loop.run(answer(), "uvloop") == "uvloop"
