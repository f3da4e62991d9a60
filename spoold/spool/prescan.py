"""The spool's read at open, started before the daemon's imports so that the two overlap.

Opening the spool reads every live row before anything is accepted (``totals.verify``:
damage must be found before writes go into the file), ~0.16 s of CPU for a
1,000,000-operation backlog; importing the daemon (aiohttp, pydantic, the contract)
takes ~0.3 s more, one after the other. ``spoold serve`` calls ``start`` as soon as it
knows the spool directory: a thread reads the rows (SQLite lets go of the GIL while it
reads, so the imports go on on the other core), and the open ``take``s that read,
waiting for it if needed. The open uses it only if the live rows are still the very ones
it read (``totals.verify``); a missing file, an error or damage leave the read to the
open, exactly as without this module.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from server.sqlite.connect import connect
from spoold.spool.layout import DB_FILE
from spoold.spool.totals import Scan, scan

#: At most this long to wait at open for a read still under way (then the open reads).
TAKE_WAIT_S = 30.0
_BUSY_TIMEOUT_MS = 1000

_started: dict[Path, _Prescan] = {}
_lock = threading.Lock()


class _Prescan:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.found: Scan | None = None
        self.thread = threading.Thread(target=self._read, name="spoold-prescan", daemon=True)

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the open reads again, and reports
            conn = connect(self.path, busy_timeout_ms=_BUSY_TIMEOUT_MS, read_only=True)
            try:
                self.found = scan(conn)
            finally:
                conn.close()


def start(spool_dir: Path) -> None:
    """Begin reading the spool of ``spool_dir`` in a thread, if it has one already."""
    path = (spool_dir / DB_FILE).resolve()
    if not path.is_file():
        return
    prescan = _Prescan(path)
    with _lock:
        if path in _started:
            return
        _started[path] = prescan
    prescan.thread.start()


def take(db_path: Path) -> Scan | None:
    """The read ``start`` made of ``db_path`` (once; waiting for it if under way), or None."""
    with _lock:
        prescan = _started.pop(db_path.resolve(), None)
    if prescan is None:
        return None
    prescan.thread.join(TAKE_WAIT_S)
    return None if prescan.thread.is_alive() else prescan.found


def forget() -> None:
    """Drop reads nobody took (tests)."""
    with _lock:
        pending = list(_started.values())
        _started.clear()
    for prescan in pending:
        prescan.thread.join(TAKE_WAIT_S)
