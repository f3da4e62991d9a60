"""The oldest SQLite the two daemons can run on, checked once by each at start-up.

The server's features, and the release that brought each: ``RETURNING`` (3.35.0, the
newest), ``PRAGMA analysis_limit`` (3.32.0), ``INSERT ... ON CONFLICT DO NOTHING``
(3.24.0), row values in keyset comparisons (3.15.0), ``WITH RECURSIVE`` (3.8.3),
WAL (3.7.0), STORED generated columns (3.31.0). The server also needs the JSON
functions (built in from 3.38, a compile-time option before, on in nearly every
build): schema 5 stores each run's rendered JSON object (``run_json``) as a generated
column. spoold needs ``RETURNING`` and UPSERT too (see ``check_sqlite_version``). An
older library would fail in the middle of a request; both daemons refuse to start
instead.
"""

from __future__ import annotations

import sqlite3

MINIMUM_SQLITE = (3, 35, 0)
_NEEDED_FOR = "UPDATE ... RETURNING"


class SqliteTooOld(RuntimeError):
    """The SQLite library linked into Python is older than the features the server uses."""


def check_sqlite_version(
    program: str = "this server", needed_for: str = _NEEDED_FOR, *, needs_json: bool = False
) -> None:
    """Raise SqliteTooOld, with a message an operator can act on, if the library is too old
    (or, with ``needs_json``, was built without the JSON functions).

    spoold checks too (``program="spoold"``): its dead-letter store uses
    ``INSERT ... RETURNING`` and its runs index UPSERT."""
    found = tuple(sqlite3.sqlite_version_info)
    if found < MINIMUM_SQLITE:
        needed = ".".join(str(part) for part in MINIMUM_SQLITE)
        raise SqliteTooOld(
            f"SQLite {sqlite3.sqlite_version} is too old: {program} needs SQLite {needed} or "
            f"newer ({needed_for}). Use a Python built against a newer SQLite "
            "(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)' shows it)."
        )
    if needs_json and not has_json_functions():
        raise SqliteTooOld(
            f"SQLite {sqlite3.sqlite_version} was built without the JSON functions, which "
            f"{program} needs (each run's JSON object is stored rendered). Use a Python built "
            "against SQLite 3.38 or newer, or one compiled with JSON1."
        )


def has_json_functions() -> bool:
    """Whether the linked SQLite has the JSON functions schema 5's ``run_json`` uses."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT json_valid('{}'), json(' []'), json_object('a', 1)").fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return True
