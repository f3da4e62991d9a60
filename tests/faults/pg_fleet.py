"""N ``telemetry-server`` replicas on one PostgreSQL database and M spoold sidecars in front
of them, as real processes on 127.0.0.1: what the replica chaos test and its benchmark run.

Each sidecar lists every replica in ``SPOOLD_UPSTREAM_URL``, rotated so that sidecar k
prefers replica k mod N: every replica takes batches while all are up, and a kill of any
one of them makes some sidecar fail over. A replica is always restarted on its own port,
so the sidecars' lists stay right. Every process is registered with a ``Reaper`` (stopped
by PID at the end, even on failure).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from daemons import Daemon, free_port
from procs import Reaper, start_server, start_spoold

#: What the replicas get besides the database URL: nothing the fault tests' servers lack.
REPLICA_ENV: dict[str, str] = {"TELEMETRY_LOG_LEVEL": "WARNING"}
#: One log line per request would be 30k lines a round per sidecar, and CPU: warnings only
#: (a batch moved to another replica logs ``upstream_failover`` at that level).
SIDECAR_ENV: dict[str, str] = {"SPOOLD_LOG_LEVEL": "WARNING"}
#: A restart competes for 2 cores with the sidecars draining at full tilt (and, on a
#: developer's machine, other test runs): measured past 20 s at a load average of 19.
REPLICA_STARTUP_TIMEOUT_S = 90.0


def cpu_s(daemon: Daemon) -> float:
    """The CPU seconds (user + system) a running daemon has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{daemon.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_s(leader: int) -> float:
    """CPU seconds of a process group led by ``leader`` (PostgreSQL's postmaster and its
    backends): the leader, the children it has reaped, and the members still running."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(stat.parent.name) == leader:
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        elif int(fields[2]) == leader:  # pgrp
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rotated(urls: list[str], first: int) -> str:
    """``SPOOLD_UPSTREAM_URL`` with ``urls[first]`` preferred, then the others in turn."""
    return ",".join(urls[first:] + urls[:first])


@dataclass
class Fleet:
    """The replicas (``None`` while killed) and the sidecars of one database."""

    workdir: Path
    reaper: Reaper
    database_url: str
    ports: list[int]
    #: PostgreSQL's postmaster, when it runs in a process group of its own (CPU accounting).
    postmaster_pid: int | None = None
    replicas: list[Daemon | None] = field(default_factory=list)
    sidecars: list[Daemon] = field(default_factory=list)
    #: Every start of a replica after the first (chaos restarts).
    restarts: int = 0
    #: CPU seconds of replicas killed so far, and what their start-ups took of it.
    killed_cpu_s: float = 0.0
    startup_cpu_s: float = 0.0

    @property
    def replica_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def up(self) -> list[int]:
        return [n for n, replica in enumerate(self.replicas) if replica is not None]

    def start_replica(self, n: int) -> Daemon:
        """Start replica n on its own port (it migrates nothing: the first one did)."""
        assert self.replicas[n] is None, f"replica {n} is running"
        daemon = start_server(
            self.reaper,
            self.workdir,
            port=self.ports[n],
            db=self.workdir / f"unused-{n}.sqlite",  # TELEMETRY_DATABASE_URL wins over it
            env={**REPLICA_ENV, "TELEMETRY_DATABASE_URL": self.database_url},
            startup_timeout_s=REPLICA_STARTUP_TIMEOUT_S,
        )
        self.replicas[n] = daemon
        self.startup_cpu_s += cpu_s(daemon)
        return daemon

    def kill_replica(self, n: int) -> None:
        """``kill -9`` of replica n by its PID: no shutdown, connections cut mid-request."""
        daemon = self.replicas[n]
        assert daemon is not None, f"replica {n} is down"
        self.killed_cpu_s += cpu_s(daemon)
        daemon.stop(signal.SIGKILL, timeout_s=10)
        self.replicas[n] = None

    def restart_replica(self, n: int) -> Daemon:
        self.restarts += 1
        return self.start_replica(n)

    def replicas_cpu_s(self) -> float:
        """CPU seconds of every replica so far, killed ones included."""
        return self.killed_cpu_s + sum(cpu_s(r) for r in self.replicas if r is not None)

    def sidecars_cpu_s(self) -> float:
        return sum(cpu_s(sidecar) for sidecar in self.sidecars)

    def failovers(self) -> int:
        """Batches the sidecars moved to another replica so far (their ``upstream_failover``
        log lines)."""
        return sum(sidecar.log().count('"upstream_failover"') for sidecar in self.sidecars)

    def restart_all_down(self) -> None:
        for n in range(len(self.replicas)):
            if self.replicas[n] is None:
                self.restart_replica(n)


def start_fleet(
    reaper: Reaper,
    workdir: Path,
    database_url: str,
    *,
    replicas: int = 3,
    sidecars: int = 3,
    sidecar_env: dict[str, str] | None = None,
    postmaster_pid: int | None = None,
) -> Fleet:
    """Start the replicas (the first alone: it migrates the empty database) and then the
    sidecars, each with its own spool directory and all replicas as upstreams."""
    fleet = Fleet(
        workdir, reaper, database_url, [free_port() for _ in range(replicas)], postmaster_pid
    )
    fleet.replicas = [None] * replicas
    for n in range(replicas):
        fleet.start_replica(n)
    urls = fleet.replica_urls
    for k in range(sidecars):
        fleet.sidecars.append(
            start_spoold(
                reaper,
                workdir,
                port=free_port(),
                upstream=rotated(urls, k % replicas),
                spool_dir=workdir / f"spool-{k}",
                env={**SIDECAR_ENV, **(sidecar_env or {})},
            )
        )
    return fleet
