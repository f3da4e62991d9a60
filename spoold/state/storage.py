"""Opening spoold's local files so that one damaged file never stops the sidecar.

Three SQLite files live in the spool directory. Each is checked when opened; a
damaged one (an error with a corruption code, or an integrity check that is not
"ok") is renamed aside with its -wal/-shm to ``<name>.corrupt-<UTC stamp>``,
kept for inspection, logged (``spool_corrupt_renamed``, ``dead_letter_store_corrupt``,
``runs_index_corrupt``) and counted (the integrity check of a large runs index
runs after start-up instead, see ``spoold.state.verify``; the spool's rows are always read
before serving):

* ``spool.db`` - the queue (``spoold.spool.store``): a fresh spool; the
  operations the old one held are counted lost at start-up (``spoold.state.recovery``);
* ``deadletters.sqlite`` - a fresh, empty dead-letter store; the letters the old
  file held (counted, if it can still be read) are in the set-aside file only;
* ``runs-index.sqlite`` - a fresh index, rebuilt from the spool by
  ``recovery.reconcile``: every queued operation is folded in again, so its runs
  are known (``duplicate``, read-your-writes, updates accepted at once) and
  ``accepted = forwarded + queued + dead_lettered`` holds. Lost with the old
  index: the history counters (``accepted`` restarts at what is queued,
  ``forwarded``/``dead_lettered``/``duplicates``/``quarantined`` at 0) and the
  runs already delivered (as if pruned after ``SPOOLD_INDEX_RETENTION_S``: a
  repeated create is answered ``created`` and forwarded again, which the server
  applies idempotently - a terminal status is never overwritten by ``running``).

The counts (``StorageRecoveries``) are kept in the runs index. A rebuilt index
cannot know the old count, so it starts ``index_rebuilds`` from the number of
set-aside index files in the directory.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import structlog

from server.sqlite.connect import connect
from spoold.spool import DeadLetterStore, Spool
from spoold.spool.integrity import SetAside, check_file, open_or_set_aside
from spoold.spool.layout import DB_FILE
from spoold.state.runs_index import RunsIndex
from spoold.state.verify import Deferred, check_now, clear_request

log = structlog.get_logger("spoold.state.storage")

INDEX_FILE = "runs-index.sqlite"
DEAD_LETTER_FILE = "deadletters.sqlite"
#: How long a look at a damaged dead-letter file waits for a lock (it only counts letters).
PEEK_BUSY_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class Storage:
    """spoold's open local files: the spool, the dead-letter store and three connections
    to the runs index, one per user (their durability and write order differ)."""

    spool: Spool
    dead_letters: DeadLetterStore
    #: The accept thread's (synchronous=NORMAL: its commits are repaired from the spool).
    accept_index: RunsIndex
    #: The drainer's (its settles are fsync'd after their commits, before the spool ack:
    #: a settle is never redone).
    drain_index: RunsIndex
    #: The HTTP reads'.
    reader_index: RunsIndex

    def close(self) -> None:
        """Close the index connections, then the dead-letter store, then the spool."""
        for index in (self.accept_index, self.drain_index, self.reader_index):
            index.close()
        self.dead_letters.close()
        self.spool.close()


@dataclass(frozen=True)
class StorageRecoveries:
    """How often each local file was found damaged and replaced (kept in the runs index)."""

    index_rebuilds: int = 0
    dead_letter_store_resets: int = 0
    spool_resets: int = 0

    @classmethod
    def read(cls, index: RunsIndex) -> StorageRecoveries:
        counters = index.counters()
        return cls(
            index_rebuilds=counters["index_rebuilds"],
            dead_letter_store_resets=counters["dead_letter_store_resets"],
            spool_resets=counters["spool_resets"],
        )

    def by_file(self) -> dict[str, int]:
        """Keyed by the file's label in metrics (a fixed set)."""
        return {
            "runs_index": self.index_rebuilds,
            "dead_letters": self.dead_letter_store_resets,
            "spool": self.spool_resets,
        }


def open_storage(
    spool_dir: Path,
    *,
    capacity_bytes: int,
    min_free_disk_bytes: int,
    check_max_bytes: int | None = None,
    deferred: Deferred | None = None,
) -> Storage:
    """The spool, the dead-letter store and three runs-index connections (accept, drain
    with synchronous=FULL, read), each damaged file set aside and counted.

    With ``check_max_bytes``, the integrity check of a runs index larger than that is
    not made here but recorded in ``deferred``, to run after start-up
    (``spoold.state.verify``); without it, every file is checked now."""
    spool_path, index_path = spool_dir / DB_FILE, spool_dir / INDEX_FILE
    # The spool's rows are always read before serving: damage found later would set
    # aside, at the next start, every write acknowledged meanwhile. Only the runs index
    # (rebuilt from the spool, so nothing is lost with it) may be checked after start-up.
    check_index = check_now(index_path, check_max_bytes)
    spool = Spool(
        spool_dir,
        capacity_bytes=capacity_bytes,
        min_free_disk_bytes=min_free_disk_bytes,
    )
    clear_request(spool_path)  # checked (or set aside) now
    opened: list[RunsIndex | DeadLetterStore] = []
    try:
        dead_letters, letters_aside = open_dead_letters(spool_dir / DEAD_LETTER_FILE)
        opened.append(dead_letters)
        index, index_aside = open_index(index_path, check=check_index)
        clear_request(index_path)
        opened.append(index)
        if deferred is not None:
            deferred.index = None if check_index else index_path
        if index_aside is not None:
            index.count_now("index_rebuilds", len(set_aside_files(spool_dir / INDEX_FILE)))
        if letters_aside is not None:
            index.count_now("dead_letter_store_resets", 1)
        # NORMAL: its settles commit without an fsync, then ``sync`` (no PRAGMA to switch).
        drain_index = RunsIndex(spool_dir / INDEX_FILE, synchronous="NORMAL", yields=True)
        opened.append(drain_index)
        # Its settles never copy the WAL inside their commit (holding the write gate): the
        # drain's record stage does, between rounds (``spoold.forward.record``).
        drain_index.wal_autocheckpoint(0)
        reader_index = RunsIndex(spool_dir / INDEX_FILE)
        opened.append(reader_index)
        return Storage(spool, dead_letters, index, drain_index, reader_index)
    except BaseException:
        for thing in opened:
            thing.close()
        spool.close()
        raise


def open_index(path: Path, *, check: bool = True) -> tuple[RunsIndex, SetAside | None]:
    """The runs index, checked (``check=False``: only what opening it reads); a damaged
    one is set aside (the fresh one is rebuilt from the spool by ``recovery.reconcile``,
    which folds in every item it has not recorded)."""
    index, aside = open_or_set_aside(path, _checked_index if check else RunsIndex)
    if aside is not None:
        log.error(
            "runs_index_corrupt",
            path=str(path),
            renamed_to=str(aside.renamed_to),
            error=aside.error,
            code=aside.code,
            hint="rebuilt from the spool: queued runs are known again, counters restart",
        )
    return index, aside


def _checked_index(path: Path) -> RunsIndex:
    check_file(path)
    return RunsIndex(path)


def open_dead_letters(path: Path) -> tuple[DeadLetterStore, SetAside | None]:
    """The dead-letter store, checked; a damaged one is set aside and a fresh one opened."""
    letters: list[int | None] = []

    def checked(candidate: Path) -> DeadLetterStore:
        try:
            check_file(candidate)
        except BaseException:
            letters.append(readable_letters(candidate))  # counted before the rename
            raise
        return DeadLetterStore(candidate)

    store, aside = open_or_set_aside(path, checked)
    if aside is not None:
        log.error(
            "dead_letter_store_corrupt",
            path=str(path),
            renamed_to=str(aside.renamed_to),
            error=aside.error,
            code=aside.code,
            letters_lost=letters[0] if letters else None,
            hint="a fresh store is in use; the set-aside file is kept for inspection",
        )
    return store, aside


def readable_letters(path: Path) -> int | None:
    """How many dead letters a damaged file still shows (None: it cannot say)."""
    try:
        conn = connect(path, busy_timeout_ms=PEEK_BUSY_TIMEOUT_MS, read_only=True)
    except sqlite3.Error:
        return None
    try:
        return int(conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def set_aside_files(path: Path) -> list[Path]:
    """The set-aside copies of the database at ``path`` (not their -wal/-shm files)."""
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))
