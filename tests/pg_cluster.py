"""A throwaway PostgreSQL cluster for tests: Debian's binaries, an unprivileged user,
data and socket directories in a temp dir of its own, 127.0.0.1 on a free port.

One cluster per session (``Cluster.start``, ~1-2 s); each test gets a fresh database
made from an empty template (``Cluster.new_database``: CREATE DATABASE copies it in
milliseconds). Every wait is bounded; the postmaster is stopped by its PID (SIGINT, a
fast shutdown, then SIGKILL of its process group after a bound).

Why a temp dir of its own (``tempfile.mkdtemp``), not pytest's ``tmp_path``: the
cluster runs as another user, who must traverse every directory above its data
directory; pytest's ``/tmp/pytest-of-<user>`` is 0700 and pytest resets it to 0700
at every session start, so a concurrent pytest session would lock the cluster out.

Missing binaries skip the PostgreSQL tests locally, but fail them in CI (``CI`` set):
``.ci/run`` installs them, so their absence there is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ports import free_port

#: The unprivileged system user the cluster runs as when the tests run as root.
PG_USER = "telemetry-pg"
#: The cluster's superuser role (password auth over TCP).
SUPERUSER = "telemetry"
TEMPLATE = "telemetry_template"
_START_ATTEMPTS = 3  # a free port can be taken between choosing and binding it
_READY_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_PREFIX = "telemetry-pg-"
#: The PID of the test session that made a cluster (``sweep_orphans`` reads it).
_OWNER_FILE = "owner.pid"


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: (
            int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The bin directory, or skip (fail in CI) with the reason."""
    found = bin_dir()
    if found is not None and (found / "postgres").exists():
        return found
    reason = "PostgreSQL binaries missing (/usr/lib/postgresql/*/bin): apt-get install postgresql"
    if os.environ.get("CI"):
        pytest.fail(reason)  # .ci/run installs them: their absence there is a failure
    pytest.skip(reason)


def _run_as() -> tuple[int, int] | None:
    """The (uid, gid) to run PostgreSQL as: ``PG_USER`` when root (created if absent;
    postgres refuses to run as root), else None (the current user)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        # Two sessions may race to create it: 9 is useradd's "already exists".
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode not in (0, 9):
            raise RuntimeError(f"useradd {PG_USER} failed: {done.stderr.decode()[-500:]}") from None
        entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid


@dataclass
class Cluster:
    bin: Path
    root: Path
    port: int
    password: str
    process: subprocess.Popen[bytes]
    owner: tuple[int, int] | None
    #: Server settings given on the postmaster's command line after the defaults (a
    #: primary's replication settings, ``tests/pg_standby.py``); kept across restarts.
    settings: dict[str, str] = field(default_factory=dict)
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    # ---- lifecycle ----------------------------------------------------------------

    @classmethod
    def start(cls, bin_path: Path, settings: Mapping[str, str] | None = None) -> Cluster:
        """initdb, then start the postmaster (with ``settings`` besides the defaults)
        and wait until it accepts connections."""
        owner = _run_as()
        sweep_orphans()
        root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (root / _OWNER_FILE).write_text(str(os.getpid()))
        try:
            (root / "socket").mkdir()
            password = secrets.token_urlsafe(18)
            pwfile = root / "pwfile"
            pwfile.write_text(password + "\n")
            if owner is not None:
                for path in (root, root / "socket", pwfile):
                    os.chown(path, *owner)
            _run(
                owner,
                [
                    str(bin_path / "initdb"),
                    "-D",
                    str(root / "data"),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",  # the data directory is thrown away; fsync stays on
                ],
                root,
            )
            pwfile.unlink()
            last_error = ""
            for _ in range(_START_ATTEMPTS):
                cluster = cls._postmaster(bin_path, root, password, owner, settings=settings)
                if cluster.wait_ready():
                    cluster.create_template()
                    return cluster
                cluster.stop()
                last_error = cluster.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start: {last_error}")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    def _postmaster(
        cls,
        bin_path: Path,
        root: Path,
        password: str,
        owner: tuple[int, int] | None,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> Cluster:
        port = port or free_port()
        extra = [arg for key, value in (settings or {}).items() for arg in ("-c", f"{key}={value}")]
        log = open(root / "postgres.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            process = subprocess.Popen(
                [
                    str(bin_path / "postgres"),
                    "-D",
                    str(root / "data"),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={root / 'socket'}",
                    "-c",
                    "fsync=on",
                    "-c",
                    "synchronous_commit=on",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=32MB",
                    "-c",
                    "log_min_messages=warning",
                    "-c",
                    "log_min_error_statement=panic",  # no statements (or values) in the log
                    *extra,
                ],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: killed as one if it hangs
                **_credentials(owner),
            )
        finally:
            log.close()
        return cls(bin_path, root, port, password, process, owner, dict(settings or {}))

    def wait_ready(self) -> bool:
        """Until the postmaster accepts connections (bounded); False if it exited."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
                timeout=10,
                check=False,
            )
            if ready.returncode == 0:
                return True
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL not ready within {_READY_TIMEOUT_S} s")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser (one statement per call; no transaction block)."""
        done = subprocess.run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.decode(errors='replace')[-1000:]}")
        return done.stdout.decode().strip()

    def create_template(self) -> None:
        self.psql(f"CREATE DATABASE {TEMPLATE} IS_TEMPLATE true")

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database (a copy of the template); its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def kill9(self) -> None:
        """SIGKILL the postmaster (a crash): its backends notice and exit."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=_STOP_TIMEOUT_S)
        # Backends exit within a moment of their postmaster's death; the next start
        # refuses to run while any still holds the shared memory, so wait for them.
        _wait_group_gone(self.process.pid)

    def restart(self) -> None:
        """Start the postmaster again on the same data directory and port (crash recovery
        runs first); bounded, like the first start."""
        self.process = self._postmaster(
            self.bin, self.root, self.password, self.owner, port=self.port, settings=self.settings
        ).process
        if not self.wait_ready():
            raise RuntimeError(
                f"PostgreSQL did not restart: {self.log.read_text(errors='replace')[-2000:]}"
            )

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL of its process group after a bound."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=_STOP_TIMEOUT_S)
        _wait_group_gone(self.process.pid)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def sweep_orphans() -> None:
    """Stop the clusters of test sessions that died without stopping theirs (a pytest killed
    by a timeout or SIGKILL cannot run its finalizers), so they do not pile up. A cluster
    whose session still runs is left alone."""
    for root in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            owner_pid = int((root / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being made
        if _alive(owner_pid):
            continue
        try:
            postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{postmaster}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            postmaster = 0  # not running
        else:
            if str(root / "data").encode() not in cmdline:
                postmaster = 0  # the PID was reused by another process
        if postmaster:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGINT)
            _wait_group_gone(postmaster)
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group_gone(pgid: int) -> None:
    """Until no process of the postmaster's group is left (bounded; SIGKILL at the end)."""
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _credentials(owner: tuple[int, int] | None) -> dict[str, object]:
    if owner is None:
        return {}
    return {"user": owner[0], "group": owner[1], "extra_groups": []}


def _run(owner: tuple[int, int] | None, args: list[str], cwd: Path) -> None:
    done = subprocess.run(
        args, cwd=cwd, capture_output=True, timeout=120, check=False, **_credentials(owner)
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(args[0]).name} failed: {done.stderr.decode(errors='replace')[-2000:]}"
        )
