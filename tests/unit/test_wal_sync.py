"""``WalSync``: one descriptor for the WAL's life, a failed fsync final, a replaced WAL
file followed, nothing to sync (and no descriptor of the database file) without a WAL."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

import pytest

from server.sqlite.wal_sync import WalSync


def wal_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    return conn


def fsynced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    real = os.fsync
    paths: list[str] = []

    def recording(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return paths


def opened_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    real = os.open
    paths: list[str] = []

    def recording(path: str, flags: int, *args: int) -> int:
        paths.append(str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(os, "open", recording)
    return paths


def test_it_fsyncs_the_wal_through_one_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "a.sqlite"
    with contextlib.closing(wal_database(db)) as conn:
        sync = WalSync(db)
        paths = fsynced_paths(monkeypatch)
        opened = opened_paths(monkeypatch)
        for i in range(3):
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            sync.sync()
        sync.close()
    assert paths == [f"{db}-wal"] * 3
    assert opened == [f"{db}-wal"]


def test_a_failed_fsync_fails_every_later_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "a.sqlite"
    with contextlib.closing(wal_database(db)) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        sync = WalSync(db)
        calls: list[int] = []

        def failing(fd: int) -> None:
            calls.append(fd)
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fsync", failing)
        with pytest.raises(OSError, match="Input/output"):
            sync.sync()
        monkeypatch.undo()
        with pytest.raises(OSError, match="earlier fsync") as raised:
            sync.sync()  # a second fsync would prove nothing: not even tried
        assert raised.value.errno == errno.EIO
        assert len(calls) == 1
        sync.close()


def test_a_replaced_wal_file_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last connection closed (the WAL deleted), a new one made a new WAL file."""
    db = tmp_path / "a.sqlite"
    sync = WalSync(db)
    with contextlib.closing(wal_database(db)) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        sync.sync()
    assert not Path(f"{db}-wal").exists()
    paths = fsynced_paths(monkeypatch)
    opened = opened_paths(monkeypatch)
    sync.sync()  # no WAL: nothing to sync (the close checkpointed and synced the database)
    assert (paths, opened) == ([], [])
    with contextlib.closing(wal_database(db)) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        before = os.stat(f"{db}-wal").st_ino
        sync.sync()
        fd = sync._fd
        assert fd is not None
        assert os.readlink(f"/proc/self/fd/{fd}") == f"{db}-wal"
        assert os.fstat(fd).st_ino == before
    sync.close()
    # Never the database file: closing a descriptor of it would drop the POSIX locks the
    # process's SQLite connections hold on it.
    assert paths == [f"{db}-wal"]
    assert opened == [f"{db}-wal"]
