"""The spool's live totals (groups, bytes, operations), kept current by SQLite triggers.

Opening a spool used to count its live rows with one aggregate over the queue
table, which reads every row (a 1,000,000-operation backlog is ~800 MB): start-up
grew with the backlog. Triggers on persist-queue's table keep the totals in a
one-row table instead, in the same transaction as each put, delete or status change
(an undecodable row set aside; acks in files older spoolds wrote)
(so a crash can never leave them apart): the in-memory counts are read from that row,
at open and after start-up repair (``spoold.spool.repair``).

A spool file from before the triggers gets them at its first open, with the
totals counted once in the same transaction. Opening still reads every live row once
(``spoold.spool.store``), not for the counts but to find a damaged spool before
anything is accepted (``spoold.state.verify`` says why the spool is never checked
late); that read is ``verify`` below, which also corrects totals that ever drifted.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from persistqueue.sqlackqueue import AckStatus

from spoold.spool.codec import SQL_OPS_COUNT

TABLE = "spoold_live_totals"
_QUEUE = '"ack_queue_spool"'  # persist-queue names its table ack_queue_<name>
_ACKED = int(AckStatus.acked)


def _ops(row: str) -> str:
    return SQL_OPS_COUNT.replace("substr(data", f"substr({row}.data")


def _change(sign: str, row: str) -> str:
    return (
        f"UPDATE {TABLE} SET groups = groups {sign} 1,"
        f" bytes = bytes {sign} length({row}.data), ops = ops {sign} {_ops(row)} WHERE id = 1;"
    )


_TRIGGERS = (
    f"CREATE TRIGGER IF NOT EXISTS spoold_totals_put AFTER INSERT ON {_QUEUE}"
    f" WHEN NEW.status < {_ACKED} BEGIN {_change('+', 'NEW')} END",
    f"CREATE TRIGGER IF NOT EXISTS spoold_totals_delete AFTER DELETE ON {_QUEUE}"
    f" WHEN OLD.status < {_ACKED} BEGIN {_change('-', 'OLD')} END",
    f"CREATE TRIGGER IF NOT EXISTS spoold_totals_leave AFTER UPDATE OF status ON {_QUEUE}"
    f" WHEN OLD.status < {_ACKED} AND NEW.status >= {_ACKED} BEGIN {_change('-', 'OLD')} END",
    f"CREATE TRIGGER IF NOT EXISTS spoold_totals_return AFTER UPDATE OF status ON {_QUEUE}"
    f" WHEN OLD.status >= {_ACKED} AND NEW.status < {_ACKED} BEGIN {_change('+', 'NEW')} END",
)
_COUNT_SQL = (
    f"SELECT COUNT(*), COALESCE(SUM(length(data)), 0), COALESCE(SUM({SQL_OPS_COUNT}), 0)"
    f" FROM {_QUEUE} WHERE status < {_ACKED}"
)


def install(side: sqlite3.Connection) -> bool:
    """Make sure the totals and their triggers exist (one commit); True if they were new
    (the totals were then counted from the rows, once)."""
    side.execute("BEGIN IMMEDIATE")
    try:
        exists = side.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
        ).fetchone()
        if not exists:
            side.execute(
                f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1),"
                " groups INTEGER NOT NULL, bytes INTEGER NOT NULL, ops INTEGER NOT NULL)"
            )
            side.execute(
                f"INSERT INTO {TABLE} (id, groups, bytes, ops) SELECT 1, * FROM ({_COUNT_SQL})"
            )
        for statement in _TRIGGERS:
            side.execute(statement)
        side.execute("COMMIT")
    except BaseException:
        side.execute("ROLLBACK")
        raise
    return not exists


def installed(side: sqlite3.Connection) -> bool:
    """Whether this spool file keeps its totals already (a file from before does not)."""
    found = side.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    return found is not None


def read(side: sqlite3.Connection) -> tuple[int, int, int]:
    """(groups, serialised bytes, operations) not yet acked, in flight included."""
    groups, nbytes, ops = side.execute(f"SELECT groups, bytes, ops FROM {TABLE}").fetchone()
    return int(groups), int(nbytes), int(ops)


#: The live rows' identity besides their totals: the sum of their ids. Rows acked and
#: others put always change it: ids come from AUTOINCREMENT, so a new row's is above every
#: live one's. It assumes what spoold does: a row's data is never rewritten once put
#: (persist-queue's ``update`` is never called), and no acked row becomes live again.
_IDENTITY = "COALESCE(SUM(_id), 0)"
_SCAN_SQL = (
    f"SELECT COUNT(*), COALESCE(SUM(length(data)), 0), COALESCE(SUM({SQL_OPS_COUNT}), 0),"
    f" {_IDENTITY} FROM {_QUEUE} WHERE status < {_ACKED}"
)
#: ``length()`` of a blob reads none of its overflow pages: for the large groups of a
#: backlog (hundreds of operations, hundreds of KB each) a few milliseconds at 1M
#: operations, against ~0.16 s for the read of every blob; for one-operation groups
#: (a row within one page) it reads most of the file.
_FINGERPRINT_SQL = (
    f"SELECT COUNT(*), COALESCE(SUM(length(data)), 0), {_IDENTITY}"
    f" FROM {_QUEUE} WHERE status < {_ACKED}"
)


@dataclass(frozen=True)
class Scan:
    """What reading every live row found (``scan``), and which rows those were."""

    groups: int
    nbytes: int
    ops: int
    id_sum: int

    def totals(self) -> tuple[int, int, int]:
        return self.groups, self.nbytes, self.ops


def scan(conn: sqlite3.Connection) -> Scan:
    """Read every live row (the check at open), in one statement: one snapshot."""
    groups, nbytes, ops, id_sum = conn.execute(_SCAN_SQL).fetchone()
    return Scan(int(groups), int(nbytes), int(ops), int(id_sum))


def count(side: sqlite3.Connection) -> tuple[int, int, int]:
    """The same, counted from every live row (reads them all: the check at open, the CLI)."""
    groups, nbytes, ops = side.execute(_COUNT_SQL).fetchone()
    return int(groups), int(nbytes), int(ops)


@dataclass(frozen=True)
class Verified:
    """What ``verify`` found: the correction made to the totals (counted - kept; None when
    they agreed), and whether an earlier scan stood for the read of every row."""

    corrected: tuple[int, int, int] | None
    earlier_scan_used: bool


def verify(side: sqlite3.Connection, earlier: Scan | None = None) -> Verified:
    """Count every live row and compare with the totals, in one read snapshot; if they
    differ, correct the totals by the difference (puts and acks may have moved them
    since).

    Reading every row is also what surfaces a damaged page (``spoold.state.verify``).
    ``earlier``, a ``scan`` made before the open (``spoold.spool.prescan``), stands for
    that read if the live rows are still the very ones it read (same count, bytes and
    ids: a fingerprint that reads no overflow page); otherwise every row is read here.
    """
    side.execute("BEGIN")  # one snapshot for both reads (WAL: writers go on meanwhile)
    try:
        if earlier is not None and _same_rows(side, earlier):
            counted, used = earlier.totals(), True
        else:
            counted, used = count(side), False
        kept = read(side)
    finally:
        side.execute("COMMIT")
    if counted == kept:
        return Verified(None, used)
    delta = (counted[0] - kept[0], counted[1] - kept[1], counted[2] - kept[2])
    side.execute("BEGIN IMMEDIATE")
    try:
        side.execute(
            f"UPDATE {TABLE} SET groups = groups + ?, bytes = bytes + ?, ops = ops + ?"
            " WHERE id = 1",
            delta,
        )
        side.execute("COMMIT")
    except BaseException:
        side.execute("ROLLBACK")
        raise
    return Verified(delta, used)


def _same_rows(side: sqlite3.Connection, earlier: Scan) -> bool:
    """Whether the live rows are the ones ``earlier`` read (reads no blob)."""
    groups, nbytes, id_sum = side.execute(_FINGERPRINT_SQL).fetchone()
    return (int(groups), int(nbytes), int(id_sum)) == (
        earlier.groups,
        earlier.nbytes,
        earlier.id_sum,
    )
