"""The sidecar's stable id, sent to the server as ``X-Spoold-Id`` on every batch.

The server keeps, per sidecar id, when it last heard from it and how far back its
spool reaches, and judges the runs it wrote by that (a run is not stale for the time
its sidecar could not deliver). The id is a uuid4 hex made at first start and kept in
the spool directory (file ``sidecar-id``, written to a temporary file, fsync'd, renamed,
and the directory fsync'd), so it survives restarts and moves with the spool.

It is validated when read, against the header's own rule (``[A-Za-z0-9._-]{1,64}``,
so an operator may also pin a readable id). The file is read without following a
symlink, without blocking on a FIFO, and at most ``MAX_READ_BYTES``. Decision: a file
that is empty, corrupt, hostile or not a regular file is replaced by a new id, with a
warning in the log; spoold never refuses to start over it and never sends a bad
header. If the new id cannot be written (a read-only or broken directory), spoold
runs with it for this process only and logs an error; after a restart the server
sees another sidecar, and runs written under the old id wait for
``TELEMETRY_SIDECAR_LOST_S`` (or their next write) to be judged.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("spoold.identity")

SIDECAR_ID_FILE = "sidecar-id"
MAX_READ_BYTES = 256
SIDECAR_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class SidecarId:
    value: str
    #: False when it could not be written: it lasts only as long as this process.
    persisted: bool


def valid_sidecar_id(value: str) -> bool:
    return SIDECAR_ID_PATTERN.fullmatch(value) is not None


def _read(path: Path) -> tuple[str | None, str | None]:
    """(id, None) if the file holds a valid one; (None, why not) otherwise;
    (None, None) if there is no file (a first start)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or type(exc).__name__})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, "not a regular file"
        raw = os.read(fd, MAX_READ_BYTES + 1)
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or type(exc).__name__})"
    finally:
        os.close(fd)
    if not raw.strip():
        return None, "empty"
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None, "not ASCII"
    if len(raw) > MAX_READ_BYTES or not valid_sidecar_id(value):
        return None, f"not a valid id ({len(raw)} bytes; must match {SIDECAR_ID_PATTERN.pattern})"
    return value, None


def _write_durably(path: Path, value: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, f"{value}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_sidecar_id(spool_dir: Path) -> SidecarId:
    """The id kept in ``spool_dir``, or a new one (written durably if at all possible)."""
    path = spool_dir / SIDECAR_ID_FILE
    value, problem = _read(path)
    if value is not None:
        return SidecarId(value, persisted=True)
    fresh = uuid.uuid4().hex
    try:
        _write_durably(path, fresh)
    except OSError as exc:
        log.error(
            "sidecar_id_not_persisted",
            path=str(path),
            error=f"{exc.strerror or type(exc).__name__}",
            sidecar_id=fresh,
            previous=problem,
        )
        return SidecarId(fresh, persisted=False)
    if problem is None:
        log.info("sidecar_id_created", path=str(path), sidecar_id=fresh)
    else:
        log.warning("sidecar_id_replaced", path=str(path), reason=problem, sidecar_id=fresh)
    return SidecarId(fresh, persisted=True)
