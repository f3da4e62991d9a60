"""Start-up refuses a SQLite older than the features the server uses."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from server.sqlite.version import MINIMUM_SQLITE, SqliteTooOld, check_sqlite_version
from server.storage.database import Database, StorageSettings

# Runs the real entry point with the version the check reads replaced, as an old build
# of Python's sqlite3 would report it.
_OLD_SQLITE = """
import sqlite3, sys
sqlite3.sqlite_version_info = (3, 31, 1)
sqlite3.sqlite_version = "3.31.1"
from server.__main__ import main
sys.exit(main(["--port", "0", "--db", sys.argv[1]]))
"""


def _run_on_old_sqlite(script: str, target: Path) -> subprocess.CompletedProcess[str]:
    """Run a daemon entry point in a child that reports SQLite 3.31.1, from target's folder."""
    return subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=target.parent,
    )


def test_server_refuses_to_start_on_old_sqlite(tmp_path: Path) -> None:
    """telemetry-server exits non-zero at once, naming the versions, and creates nothing."""
    db = tmp_path / "t.sqlite"
    result = _run_on_old_sqlite(_OLD_SQLITE, db)
    assert result.returncode != 0
    assert "SQLite 3.31.1 is too old" in result.stderr
    assert "3.35.0" in result.stderr
    assert "RETURNING" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()


_OLD_SQLITE_SPOOLD = """
import sqlite3, sys
sqlite3.sqlite_version_info = (3, 31, 1)
sqlite3.sqlite_version = "3.31.1"
from spoold.__main__ import main
sys.exit(main(["serve", "--port", "0", "--spool-dir", sys.argv[1],
               "--upstream", "http://127.0.0.1:9"]))
"""


def test_spoold_refuses_to_start_on_old_sqlite(tmp_path: Path) -> None:
    """spoold's dead-letter store uses INSERT ... RETURNING and its runs index UPSERT: an
    old SQLite would fail at the first dead letter, in the middle of a drain. It exits
    at once instead, naming the versions, and creates no spool."""
    spool = tmp_path / "spool"
    result = _run_on_old_sqlite(_OLD_SQLITE_SPOOLD, spool)
    assert result.returncode != 0
    assert "SQLite 3.31.1 is too old" in result.stderr
    assert "3.35.0" in result.stderr
    assert "spoold" in result.stderr
    assert "Traceback" not in result.stderr
    assert not spool.exists()


@pytest.mark.parametrize(
    ("version", "ok"),
    [((3, 34, 1), False), ((3, 35, 0), True), ((3, 7, 17), False), ((3, 45, 3), True)],
)
def test_check_reads_the_library_version(monkeypatch, version, ok) -> None:
    """The boundary is 3.35.0 (RETURNING), the newest feature used."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", version)
    monkeypatch.setattr(sqlite3, "sqlite_version", ".".join(map(str, version)))
    if ok:
        check_sqlite_version()
    else:
        with pytest.raises(SqliteTooOld, match="too old"):
            check_sqlite_version()
    assert MINIMUM_SQLITE == (3, 35, 0)


def test_database_open_checks_too(monkeypatch, tmp_path: Path) -> None:
    """Opening the database (the app factory's path) refuses an old SQLite as well."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 24, 0))
    with pytest.raises(SqliteTooOld):
        Database.open(StorageSettings(path=tmp_path / "t.sqlite"))
    assert not (tmp_path / "t.sqlite").exists()


# A SQLite built without the JSON functions (before 3.38 they were a compile option):
# every connection's json functions fail, as "no such function" would.
_NO_JSON = """
import sqlite3, sys
_connect = sqlite3.connect
def connect(*args, **kwargs):
    conn = _connect(*args, **kwargs)
    for name, arity in (("json_valid", 1), ("json", 1), ("json_object", -1)):
        conn.create_function(name, arity, lambda *values: 1 / 0)
    return conn
sqlite3.connect = connect
from server.__main__ import main
sys.exit(main(["--port", "0", "--db", sys.argv[1]]))
"""


def test_server_refuses_a_sqlite_without_json_functions(tmp_path: Path) -> None:
    """Schema 5 stores each run rendered by the JSON functions: without them every write
    would fail. The server exits at once instead, saying why, and creates nothing."""
    db = tmp_path / "t.sqlite"
    result = _run_on_old_sqlite(_NO_JSON, db)
    assert result.returncode != 0
    assert "without the JSON functions" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()
