"""A primary and a streaming standby for failover tests: two throwaway clusters
(``pg_cluster``) on 127.0.0.1, the standby made with ``pg_basebackup -R``.

The primary runs with ``wal_level=replica`` and WAL senders, and its ``pg_hba.conf``
lets the superuser replicate from 127.0.0.1. Synchronous replication
(``synchronous_standby_names`` naming the standby, ``synchronous_commit=on``) is set
only once the standby streams, with ``ALTER SYSTEM`` on the primary: set before the
base backup, the standby would carry it too and, once promoted, wait forever for a
standby of its own. Asynchronous replication leaves the name list empty: the primary
acknowledges a commit once it is on its own disk.

``Pair.url`` is the URL operators write (both hosts, ``target_session_attrs=read-write``):
the driver skips the dead primary and the still read-only standby, and reaches the
standby once promoted. Every wait is bounded; both postmasters are stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pg_cluster

#: The standby's name on the primary (its ``application_name``).
STANDBY_NAME = "standby1"
_SLOT = "standby1_slot"
_STREAM_TIMEOUT_S = 30.0
_PROMOTE_TIMEOUT_S = 30
PRIMARY_SETTINGS: dict[str, str] = {
    "wal_level": "replica",
    "max_wal_senders": "4",
    "max_replication_slots": "4",
    "wal_keep_size": "64MB",
    "synchronous_commit": "on",
}
#: A standby answers reads while it replays (``hot_standby``): the driver looks at it,
#: finds it read-only and moves on, rather than finding nobody home.
STANDBY_SETTINGS: dict[str, str] = {"hot_standby": "on"}
_HBA_LINE = f"host replication {pg_cluster.SUPERUSER} 127.0.0.1/32 scram-sha-256\n"


@dataclass
class Pair:
    primary: pg_cluster.Cluster
    standby: pg_cluster.Cluster
    synchronous: bool

    def url(self, database: str, attrs: str = "read-write") -> str:
        """Both hosts, primary first, as libpq writes them: the driver takes the first
        that is ``attrs`` (the promoted standby once the primary is gone)."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return (
            f"postgresql://{pg_cluster.SUPERUSER}:{self.primary.password}@{hosts}/{database}"
            f"?target_session_attrs={attrs}"
        )

    def replication(self) -> tuple[str, str] | None:
        """(state, sync_state) of the standby as the primary sees it; None if not connected."""
        row = self.primary.psql(
            "SELECT state || ',' || sync_state FROM pg_stat_replication"
            f" WHERE application_name = '{STANDBY_NAME}'"
        )
        if not row:
            return None
        state, _, sync_state = row.partition(",")
        return state, sync_state

    def wait_streaming(self) -> None:
        """Until the primary streams to the standby in the wanted mode (bounded)."""
        wanted = ("streaming", "sync" if self.synchronous else "async")
        seen: tuple[str, str] | None = None
        deadline = time.monotonic() + _STREAM_TIMEOUT_S
        for _ in range(int(_STREAM_TIMEOUT_S / 0.05) + 1):
            seen = self.replication()
            if seen == wanted:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise RuntimeError(f"standby not {wanted} within {_STREAM_TIMEOUT_S} s: {seen}")

    def walsender_pid(self) -> int:
        """The primary's process that sends WAL to the standby."""
        return int(
            self.primary.psql(
                f"SELECT pid FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
            )
        )

    def kill9_primary(self, *stopped: int) -> None:
        """``kill -9`` of the primary's postmaster, as a crash; ``stopped`` are children
        the test SIGSTOPped (they cannot notice their postmaster's death): killed too,
        after the postmaster, so it never sees them die."""
        os.kill(self.primary.process.pid, signal.SIGKILL)
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.primary.process.wait(timeout=10)
        pg_cluster._wait_group_gone(self.primary.process.pid)

    def promote(self) -> None:
        """Promote the standby and wait until it takes writes (``pg_promote(wait)``)."""
        done = self.standby.psql(f"SELECT pg_promote(true, {_PROMOTE_TIMEOUT_S})")
        if done != "t":
            raise RuntimeError(f"standby not promoted within {_PROMOTE_TIMEOUT_S} s")

    def in_recovery(self) -> bool:
        return self.standby.psql("SELECT pg_is_in_recovery()") == "t"

    def destroy(self) -> None:
        for cluster in (self.standby, self.primary):
            with contextlib.suppress(Exception):
                cluster.destroy()


def start_pair(bin_path: Path, *, synchronous: bool, databases: tuple[str, ...] = ()) -> Pair:
    """A primary with ``databases`` (made before the base backup), its standby streaming
    in the asked mode. Bounded; on failure, whatever was started is stopped."""
    primary = pg_cluster.Cluster.start(bin_path, PRIMARY_SETTINGS)
    standby: pg_cluster.Cluster | None = None
    try:
        for name in databases:
            primary.psql(f"CREATE DATABASE {name} TEMPLATE {pg_cluster.TEMPLATE}")
        _allow_replication(primary)
        standby = _base_backup(primary)
        pair = Pair(primary, standby, synchronous)
        if synchronous:
            primary.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
        else:
            primary.psql("ALTER SYSTEM SET synchronous_standby_names = ''")
        primary.psql("SELECT pg_reload_conf()")
        pair.wait_streaming()
        return pair
    except BaseException:
        if standby is not None:
            standby.destroy()
        primary.destroy()
        raise


def _allow_replication(primary: pg_cluster.Cluster) -> None:
    """A ``replication`` line for the superuser from 127.0.0.1 in ``pg_hba.conf`` (initdb
    writes one; this does not rely on it), and a slot so the primary keeps the WAL the
    standby has not received."""
    hba = primary.data / "pg_hba.conf"
    with hba.open("a") as out:
        out.write(_HBA_LINE)
    primary.psql("SELECT pg_reload_conf()")
    primary.psql(f"SELECT pg_create_physical_replication_slot('{_SLOT}')")


def _base_backup(primary: pg_cluster.Cluster) -> pg_cluster.Cluster:
    """``pg_basebackup -R`` into a temp dir of its own, then the standby's postmaster."""
    root = Path(tempfile.mkdtemp(prefix=pg_cluster._PREFIX))
    (root / pg_cluster._OWNER_FILE).write_text(str(os.getpid()))  # swept if we die
    try:
        (root / "socket").mkdir()
        if primary.owner is not None:
            for path in (root, root / "socket"):
                os.chown(path, *primary.owner)
        conninfo = (
            f"host=127.0.0.1 port={primary.port} user={pg_cluster.SUPERUSER}"
            f" application_name={STANDBY_NAME}"
        )
        done = subprocess.run(
            [
                str(primary.bin / "pg_basebackup"),
                "-d",
                conninfo,
                "-D",
                str(root / "data"),
                "-R",  # standby.signal + primary_conninfo (with the password)
                "-X",
                "stream",
                "-S",
                _SLOT,
                "-c",
                "fast",
                "--no-sync",  # thrown away after the test; the standby itself fsyncs
            ],
            cwd=root,
            env={**os.environ, "PGPASSWORD": primary.password, "PGCONNECT_TIMEOUT": "10"},
            capture_output=True,
            timeout=120,
            check=False,
            **pg_cluster._credentials(primary.owner),
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed: {done.stderr.decode(errors='replace')}")
        standby = pg_cluster.Cluster._postmaster(
            primary.bin, root, primary.password, primary.owner, settings=STANDBY_SETTINGS
        )
        if not standby.wait_ready():
            log = standby.log.read_text(errors="replace")[-2000:]
            standby.stop()
            raise RuntimeError(f"standby did not start: {log}")
        return standby
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
