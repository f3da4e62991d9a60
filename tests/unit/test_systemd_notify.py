"""The sd_notify protocol against real datagram sockets, and the daemons speaking it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port

from server.runtime.systemd import extending_start_timeout, notify, watchdog_interval_s


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    sock.bind(address)
    sock.settimeout(5)
    yield sock, address
    sock.close()


def test_notify_sends_one_datagram_to_a_path_socket(path_socket: tuple[socket.socket, str]) -> None:
    """READY=1 arrives as one datagram on the socket named by NOTIFY_SOCKET."""
    sock, address = path_socket
    assert notify("READY=1\nSTATUS=up", env={"NOTIFY_SOCKET": address})
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_reaches_an_abstract_namespace_socket() -> None:
    """A NOTIFY_SOCKET starting with @ names an abstract socket."""
    name = f"lt-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_is_a_no_op_outside_systemd_and_survives_a_dead_socket(tmp_path: Path) -> None:
    """No NOTIFY_SOCKET: nothing sent; a socket nobody listens on: False, no exception."""
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_this_pid() -> None:
    """WATCHDOG_USEC=2s gives a 1 s ping; a WATCHDOG_PID of another process disables it."""
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}, pid=10) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "10"}, pid=10) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "11"}, pid=10) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({}) is None


def test_a_long_start_step_keeps_extending_the_start_timeout(
    path_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the block runs, EXTEND_TIMEOUT_USEC (3 intervals) and a watchdog ping arrive
    every interval; after it, none; disabled or outside systemd, nothing is sent."""
    sock, address = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with extending_start_timeout("migrating", interval_s=0.05):
        time.sleep(0.3)
    sock.settimeout(0.3)
    received: list[bytes] = []
    for _ in range(50):  # bounded
        try:
            received.append(sock.recv(4096))
        except TimeoutError:
            break
    assert len(received) >= 3
    assert set(received) == {b"EXTEND_TIMEOUT_USEC=150000\nWATCHDOG=1\nSTATUS=migrating"}
    with extending_start_timeout("migrating", interval_s=0.05, enabled=False):
        time.sleep(0.1)
    monkeypatch.delenv("NOTIFY_SOCKET")
    with extending_start_timeout("migrating", interval_s=0.05):
        time.sleep(0.1)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


@pytest.mark.integration
@pytest.mark.parametrize("module", ["server", "spoold"])
def test_daemon_sends_ready_watchdog_and_stopping(
    module: str, tmp_path: Path, path_socket: tuple[socket.socket, str]
) -> None:
    """The real daemon: READY=1 once serving, WATCHDOG=1 pings, STOPPING=1 on SIGTERM."""
    sock, address = path_socket
    port = free_port()
    args = (
        ["--port", str(port), "--db", str(tmp_path / "t.sqlite")]
        if module == "server"
        else [
            "serve",
            "--port",
            str(port),
            "--spool-dir",
            str(tmp_path / "spool"),
            "--upstream",
            "http://127.0.0.1:9",
        ]
    )
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        messages: list[bytes] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b"WATCHDOG=1" not in messages:
            messages.append(sock.recv(4096))
        extensions = [m for m in messages if m.startswith(b"EXTEND_TIMEOUT_USEC=")]
        others = [m for m in messages if m not in extensions]
        assert others[0].startswith(b"READY=1")
        if module == "server":  # a new file is migrated from version 0: the start is extended
            assert extensions
            assert messages.index(extensions[0]) < messages.index(others[0])
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # READY came after the socket was bound
        assert b"WATCHDOG=1" in messages
        os.kill(process.pid, signal.SIGTERM)
        for _ in range(200):  # bounded: the pings stop once STOPPING is sent
            message = sock.recv(4096)
            if message == b"STOPPING=1":
                break
        else:
            pytest.fail("no STOPPING=1")
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
