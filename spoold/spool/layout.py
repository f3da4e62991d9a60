"""What lives in a spool directory, and the checks made before opening it.

* ``spool.lock``       - flock held by the one process that owns the spool; a
                          second daemon on the same directory would resume (and
                          re-send) the first one's in-flight groups.
* ``spool_meta.json``  - ``{"format_version": 1}``; a newer version is refused
                          rather than misread.
* ``spool.db`` (+ ``-wal``/``-shm``) - persist-queue's SQLite file.
* ``reserve.bin``      - disk space given back when the disk fills (``reserve``).

A database SQLite calls corrupt is renamed aside together with its WAL and
shared-memory files: leaving an old WAL next to a fresh database would let
SQLite replay foreign pages into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

import orjson

from spoold.spool.errors import SpoolFormatError, SpoolLockedError

SPOOL_FORMAT_VERSION = 1
DB_FILE = "spool.db"
META_FILE = "spool_meta.json"
LOCK_FILE = "spool.lock"
SIDE_FILES = ("", "-wal", "-shm")


def acquire_lock(directory: Path) -> int:
    """Take the directory's exclusive lock; the returned fd holds it until closed."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise SpoolLockedError(f"spool directory {directory} is in use by another process") from exc
    return fd


def release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make renames and file creations in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_format(directory: Path) -> None:
    """Refuse a spool written by a newer format; stamp a new or legacy one with ours."""
    path = directory / META_FILE
    if path.exists():
        try:
            meta = orjson.loads(path.read_bytes())
            version = int(meta["format_version"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SpoolFormatError(f"{path} is unreadable ({exc}); move it aside") from exc
        if version > SPOOL_FORMAT_VERSION:
            raise SpoolFormatError(
                f"spool {directory} has format_version {version}; this spoold reads "
                f"up to {SPOOL_FORMAT_VERSION}: upgrade spoold or use another spool directory"
            )
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps({"format_version": SPOOL_FORMAT_VERSION, "created_at": time.time()}))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)


def quarantine(db_path: Path) -> Path:
    """Rename a corrupt database and its WAL/SHM files to ``<name>.corrupt-<UTC stamp>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffix = f".corrupt-{stamp}"
    counter = 1
    while any(Path(f"{db_path}{side}{suffix}").exists() for side in SIDE_FILES):
        counter += 1
        suffix = f".corrupt-{stamp}-{counter}"
    for side in SIDE_FILES:
        src = Path(f"{db_path}{side}")
        if src.exists():
            os.replace(src, f"{src}{suffix}")
    fsync_dir(db_path.parent)
    return Path(f"{db_path}{suffix}")


def file_bytes(db_path: Path) -> int:
    """Bytes SQLite occupies for this database (main file + WAL)."""
    total = 0
    for side in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(f"{db_path}{side}").st_size
    return total
