"""Starting and stopping the real daemons as subprocesses on 127.0.0.1, bounded in time."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ports import free_port

STARTUP_TIMEOUT_S = 20.0

#: The settings that switch a server to PostgreSQL (server/config.py).
DATABASE_URL_SETTINGS = frozenset({"TELEMETRY_DATABASE_URL", "DATABASE_URL"})


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    #: Set when the daemon serves HTTPS: the client context that trusts its certificate.
    client_ssl: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.client_ssl else 'http'}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Signal the process by PID and wait for it; SIGKILL if it overstays."""
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return int(self.process.returncode)


def http_status(
    url: str, timeout_s: float = 2.0, context: ssl.SSLContext | None = None
) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def start(
    module: str,
    args: list[str],
    *,
    port: int,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/health",
    client_ssl: ssl.SSLContext | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    stdout: Path | None = None,
) -> Daemon:
    """Run ``python -m module args`` and wait until ready_path answers 200 (over HTTPS,
    trusting client_ssl's CAs, when client_ssl is given) within ``startup_timeout_s``.
    ``stdout`` (e.g. /dev/full) takes the daemon's log lines; its stderr stays in the log."""
    log_path = workdir / f"{module}-{port}.log"
    # A database URL in the caller's environment (a developer's shell, a CI job) must not
    # move a test's server off the SQLite file it was given: only ``env`` may name one.
    inherited = {k: v for k, v in os.environ.items() if k not in DATABASE_URL_SETTINGS}
    full_env = {**inherited, **(env or {})}
    with log_path.open("ab") as log_file, (stdout or log_path).open("ab") as out_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=workdir,
            env=full_env,
            stdout=out_file if stdout is not None else log_file,
            stderr=log_file if stdout is not None else subprocess.STDOUT,
        )
    daemon = Daemon(process, port, log_path, client_ssl)
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited early ({process.returncode}):\n{daemon.log()}")
        if http_status(daemon.url + ready_path, timeout_s=0.5, context=client_ssl) == 200:
            return daemon
        time.sleep(0.05)
    daemon.stop(signal.SIGKILL)
    raise RuntimeError(f"{module} not ready within {startup_timeout_s}s:\n{daemon.log()}")


def start_server(
    workdir: Path,
    *,
    db_path: Path | None = None,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    stdout: Path | None = None,
) -> Daemon:
    """A real telemetry-server on ``db_path`` (default ``workdir/server.sqlite``)."""
    port = port or free_port()
    db = db_path or workdir / "server.sqlite"
    args = ["--port", str(port), "--db", str(db)]
    return start("server", args, port=port, workdir=workdir, env=env, stdout=stdout)


def start_spoold(
    workdir: Path,
    upstream_url: str,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    stdout: Path | None = None,
) -> Daemon:
    """A real spoold forwarding to ``upstream_url``, its spool in ``workdir/spool``."""
    port = port or free_port()
    args = ["serve", "--port", str(port), "--upstream", upstream_url]
    args += ["--spool-dir", str(workdir / "spool")]
    return start("spoold", args, port=port, workdir=workdir, env=env, stdout=stdout)


@contextlib.contextmanager
def running_server(
    workdir: Path,
    *,
    db_path: Path | None = None,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Daemon]:
    """A real telemetry-server for the duration of the block, stopped by PID after."""
    daemon = start_server(workdir, db_path=db_path, port=port, env=env)
    try:
        yield daemon
    finally:
        daemon.stop()
