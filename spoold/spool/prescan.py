"""The spool's read at open, started before the daemon's imports so that the two overlap.

Opening the spool reads every live row before anything is accepted (``totals.verify``:
damage must be found before writes go into the file), ~0.16 s of CPU for a
1,000,000-operation backlog; importing the daemon (aiohttp, pydantic, the contract)
takes ~0.3 s more, one after the other. ``spoold serve`` calls ``start`` as soon as it
knows the spool directory: a thread takes the directory's lock (none of this happens if
another process holds it), reads the rows (SQLite lets go of the GIL while it reads, so
the imports go on on the other core) and keeps the lock; the spool's open ``take``s that
read, waiting for it if needed, and releases the lock just before taking it itself, so
no other process can change the file in between. The open uses the read only if the
live rows are still the very ones it read (``totals.verify``); no file, a locked
directory, an error or damage leave the read to the open, exactly as without this module.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from server.sqlite.connect import connect
from spoold.spool import layout
from spoold.spool.totals import Scan, scan

_BUSY_TIMEOUT_MS = 1000

_started: dict[Path, _Prescan] = {}
_guard = threading.Lock()


class _Prescan:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.found: Scan | None = None
        self.lock_fd = -1
        self.thread = threading.Thread(target=self._read, name="spoold-prescan", daemon=True)

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the open reads again, and reports
            self.lock_fd = layout.acquire_lock(self.directory)
            conn = connect(
                self.directory / layout.DB_FILE, busy_timeout_ms=_BUSY_TIMEOUT_MS, read_only=True
            )
            try:
                self.found = scan(conn)
            finally:
                conn.close()

    def release(self) -> None:
        if self.lock_fd >= 0:
            layout.release_lock(self.lock_fd)
            self.lock_fd = -1


def start(spool_dir: Path) -> None:
    """Begin reading the spool of ``spool_dir`` in a thread, if it has one already."""
    directory = spool_dir.resolve()
    if not (directory / layout.DB_FILE).is_file():
        return
    prescan = _Prescan(directory)
    with _guard:
        if directory in _started:
            return
        _started[directory] = prescan
    prescan.thread.start()


def take(spool_dir: Path) -> Scan | None:
    """The read ``start`` made of ``spool_dir`` (once), or None; waits for it to end (it
    is the read the open would make), then releases the directory's lock it held."""
    with _guard:
        prescan = _started.pop(spool_dir.resolve(), None)
    if prescan is None:
        return None
    prescan.thread.join()
    prescan.release()
    return prescan.found


def forget() -> None:
    """Drop reads nobody took, and their locks (tests)."""
    with _guard:
        pending = list(_started.values())
        _started.clear()
    for prescan in pending:
        prescan.thread.join()
        prescan.release()
