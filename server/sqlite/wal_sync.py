"""Commits made durable after the fact, outside the write lock: fsync a database's WAL.

In WAL mode a commit made with ``synchronous=NORMAL`` has written its frames to the WAL
file, only not fsync'd it. An fsync of that file puts them on disk: once ``WalSync.sync``
returns, every commit made before it is as durable as a ``synchronous=FULL`` one. The
difference is where the fsync happens: FULL does it inside the commit, holding the file's
write lock (and whatever gate the caller holds around it) for the whole fsync, so every
other writer waits for it; a NORMAL commit followed by ``sync`` lets them commit while it
runs. SQLite never loses a NORMAL commit's frames before that: the WAL is only reused
after a checkpoint that fsyncs the WAL before copying it and the database after (no
connection to these files checkpoints with ``synchronous=OFF``), its new header is
synced inside the commit that starts it over, and the file is only deleted at the last
connection's close, after a checkpoint.

A failed fsync is final: Linux may drop the dirty pages it could not write and report
the error once, so a second fsync that "succeeds" proves nothing. ``WalSync`` keeps one
descriptor for its file's life (it is told of write-back errors from the moment it was
opened, including those another descriptor's fsync saw first) and, once an fsync failed,
fails every later ``sync``: what depends on it (a spool ack, the next settle) waits for
a restart, whose recovery works from what is really on disk.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path


class WalSync:
    """fsync of one database's WAL (``sync``), from any thread."""

    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._failed: OSError | None = None

    def sync(self) -> None:
        """Put every commit made so far on disk; ``OSError`` if that cannot be promised
        (this fsync or an earlier one failed)."""
        with self._lock:
            if self._failed is not None:
                raise OSError(
                    errno.EIO,
                    f"an earlier fsync of {self._db_path}'s WAL failed ({self._failed});"
                    " restart to recover from what is on disk",
                )
            fd = self._descriptor()
            if fd is None:  # no WAL: the last close checkpointed it and synced the database
                return
            try:
                os.fsync(fd)
            except OSError as exc:
                self._failed = exc
                raise

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _descriptor(self) -> int | None:
        """The WAL's descriptor, opened once (again only if the file was replaced: the
        last connection closed and a new one made it); None without a WAL file (every
        connection closed, which checkpoints into the database and syncs it first).

        Never a descriptor of the database file itself: closing it would drop every
        POSIX lock this process's SQLite connections hold on that file (locks belong to
        the process and the file, not the descriptor), leaving another process free to
        write under them. SQLite takes no such locks on the WAL file."""
        path = f"{self._db_path}-wal"
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return None
        if self._fd is None or (now.st_dev, now.st_ino) != self._inode:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._fd = os.open(path, os.O_RDONLY)
            opened = os.fstat(self._fd)
            self._inode = (opened.st_dev, opened.st_ino)
        return self._fd
