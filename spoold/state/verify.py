"""The check start-up leaves for later, so it does not grow with the backlog.

``PRAGMA integrity_check`` of the runs index reads the whole file (~0.9 GB for a
1,000,000-operation backlog: seconds). For an index larger than
``SPOOLD_STARTUP_CHECK_MAX_MB`` it runs in a thread once spoold is serving; a smaller
index (and one whose check was requested, below) is still checked before anything is
accepted. The spool is never checked late: its rows are read before serving, because a
damaged spool is set aside whole, and everything acknowledged into it since start-up
would go with it.

Deferring the index's check loses nothing: the index is rebuilt from the spool. If the
check after start-up finds damage, spoold writes ``<file>.check-at-start`` beside the
file, logs ``local_file_damaged`` (critical) and exits at once with status 70 - the same
as a kill -9, which loses nothing acknowledged - and systemd restarts it
(``Restart=on-failure``). That next start sees the request and checks the index before
serving: a damaged one is set aside and rebuilt from the spool (``spoold.state.storage``), and
the request removed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from server.sqlite.errors import is_corruption
from spoold.spool.integrity import check_file

log = structlog.get_logger("spoold.state.verify")

#: Exit status after damage found by a check after start-up (EX_SOFTWARE): a failure, so
#: systemd's ``Restart=on-failure`` starts spoold again, which then checks the file first.
DAMAGE_EXIT_CODE = 70
REQUEST_SUFFIX = ".check-at-start"


def request_path(path: Path) -> Path:
    return path.with_name(path.name + REQUEST_SUFFIX)


def check_requested(path: Path) -> bool:
    """Whether a check after start-up found ``path`` damaged (and asked for this one)."""
    return request_path(path).exists()


def request_check(path: Path) -> None:
    """Ask the next start to check ``path`` before serving (durably: fsync'd)."""
    marker = request_path(path)
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"damage found by the check after start-up\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    directory = os.open(marker.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def clear_request(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        request_path(path).unlink()


def check_now(path: Path, max_bytes: int | None) -> bool:
    """Whether to check ``path`` at start-up: small enough, or a check was requested."""
    if max_bytes is None or check_requested(path):
        return True
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            size += Path(f"{path}{suffix}").stat().st_size
    return size <= max_bytes


def lower_this_threads_priority() -> None:
    """Nice 19 for the calling thread only (Linux schedules threads one by one); best
    effort: elsewhere, or if refused, the check just runs at the usual priority."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _hard_exit() -> None:
    os._exit(DAMAGE_EXIT_CODE)


@dataclass
class Deferred:
    """The check start-up left for later."""

    index: Path | None = None  # the runs index, if its integrity check was deferred
    on_damage: Callable[[], None] = field(default=_hard_exit)

    def __bool__(self) -> bool:
        return self.index is not None

    def run(self) -> bool:
        """Run it (in a thread of their own, at the lowest CPU priority: the drain and
        the accept path go first; see ``spoold.app``); False if it found damage (after
        ``on_damage``)."""
        if self.index is not None:
            try:
                check_file(self.index)
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise
                return self._damaged(self.index, exc)
            log.info("runs_index_checked_after_start", path=str(self.index))
        return True

    def _damaged(self, path: Path, exc: sqlite3.DatabaseError) -> bool:
        request_check(path)
        log.critical(
            "local_file_damaged",
            path=str(path),
            error=str(exc),
            code=getattr(exc, "sqlite_errorname", None),
            hint=f"exiting with status {DAMAGE_EXIT_CODE}: the next start checks the file "
            "and sets it aside if it is damaged (acknowledged writes are in the spool)",
        )
        self.on_damage()
        return False
