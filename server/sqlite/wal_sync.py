"""Commits made durable after the fact, outside the write lock: fsync a database's WAL.

In WAL mode a commit made with ``synchronous=NORMAL`` has written its frames to the WAL
file, only not fsync'd it. An fsync of that file, from any descriptor, puts them on disk:
once ``sync_wal`` returns, the commit is as durable as a ``synchronous=FULL`` one. The
difference is where the fsync happens: FULL does it inside the commit, holding the
file's write lock (and whatever gate the caller holds around it) for the whole fsync, so
every other writer waits for it; a NORMAL commit followed by ``sync_wal`` lets them
commit while it runs. SQLite never loses a NORMAL commit's frames before that: the WAL is
only reused after a checkpoint that fsyncs the WAL before copying it and the database
after.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_wal(db_path: Path) -> None:
    """fsync ``db_path``'s WAL (every commit made so far is on disk after it).

    Without a WAL file (the last connection checkpointed it away at close, which syncs
    the database first) the database file itself is fsync'd. An ``OSError`` (EIO, say)
    is raised: the caller has not made its commit durable and must not act as if.
    """
    try:
        fd = os.open(f"{db_path}-wal", os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(db_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
