"""The one way both daemons open an SQLite file: busy timeout, journal, sync, pragmas.

Every value is passed in by the caller (the server from its config, spoold from its
constants): this module only decides the order and that a connection half-configured
is closed, never returned. Connections are made with ``check_same_thread=False``:
the daemons hand them between threads under their own locks (that flag is Python's
check only; SQLite is built thread-safe).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path


def connect(
    path: str | os.PathLike[str],
    *,
    busy_timeout_ms: int,
    read_only: bool = False,
    journal_mode: str | None = None,
    synchronous: str | None = None,
    pragmas: Sequence[str] = (),
    implicit_transactions: bool = False,
    make_parent: bool = False,
) -> sqlite3.Connection:
    """Open ``path`` and configure it, in this order: busy timeout, journal mode,
    synchronous, then ``pragmas`` (each ``"name = value"``).

    ``read_only`` opens with ``mode=ro`` (no write lock can ever be taken). The
    connection is in autocommit mode (the caller issues BEGIN itself) unless
    ``implicit_transactions``: sqlite3's default, a BEGIN before the first INSERT,
    UPDATE or DELETE and ``commit()`` to end it (what persist-queue expects). A
    journal mode SQLite refuses is not an error here: a caller that needs one reads
    ``PRAGMA journal_mode`` back.
    """
    if make_parent:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    target = f"{Path(path).resolve().as_uri()}?mode=ro" if read_only else os.fspath(path)
    timeout_s = busy_timeout_ms / 1000
    conn = (
        sqlite3.connect(target, uri=read_only, timeout=timeout_s, check_same_thread=False)
        if implicit_transactions
        else sqlite3.connect(
            target,
            uri=read_only,
            timeout=timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
    )
    try:
        # Exactly the milliseconds asked for (the float ``timeout`` above may round).
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms):d}")
        if journal_mode is not None:
            conn.execute(f"PRAGMA journal_mode = {journal_mode}").fetchall()
        if synchronous is not None:
            conn.execute(f"PRAGMA synchronous = {synchronous}")
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn
