"""A reserve of disk space the spool can give back when the disk fills up.

The drainer's acks are what frees the disk, but an ack is a write too: on a
disk with no byte left (a floor of 0, or another process filling it), SQLite
cannot append it to the WAL, nor checkpoint the WAL into the database, and
the spool would stay full for good. So the spool keeps a file of real,
allocated bytes beside it and deletes it the first time a reader-side write
fails for lack of space; the acks then go through and the drain resumes. It is
made again once the spool has drained and there is room.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import structlog

log = structlog.get_logger("spoold.spool")

RESERVE_FILE = "reserve.bin"
#: At most this share of the free space goes into the reserve.
FREE_SHARE = 4
MIN_BYTES = 64 * 1024
_CHUNK = b"\0" * (1024 * 1024)


class DiskReserve:
    """``reserve.bin`` in the spool directory, up to ``max_bytes`` long."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.path = directory / RESERVE_FILE
        self.max_bytes = max_bytes

    @property
    def present(self) -> bool:
        return self.path.exists()

    def ensure(self) -> None:
        """Create the reserve if it is missing and the disk has room; never raises."""
        if self.max_bytes <= 0 or self.present:
            return
        try:
            size = min(self.max_bytes, shutil.disk_usage(self.path.parent).free // FREE_SHARE)
            if size < MIN_BYTES:
                return
            partial = self.path.with_suffix(".partial")
            with partial.open("wb") as handle:
                for offset in range(0, size, len(_CHUNK)):
                    handle.write(_CHUNK[: min(len(_CHUNK), size - offset)])
                handle.flush()
                os.fsync(handle.fileno())
            partial.replace(self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.with_suffix(".partial").unlink()
            log.info("spool_reserve_not_made", error=str(exc))
            return
        log.info("spool_reserve_made", path=str(self.path), bytes=size)

    def release(self) -> bool:
        """Delete the reserve; True if there was one to give back."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("spool_reserve_released", path=str(self.path), bytes=size)
        return True
