"""``DatabaseFlush``: one descriptor of the main database file, a failed flush final, and
no close under a flush that is still running (its number must not be reused under it)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from server.sqlite import db_flush
from server.sqlite.db_flush import DatabaseFlush, FlushFailed


def database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    return conn


def test_a_flush_fdatasyncs_the_main_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.sqlite"
    flushed: list[str] = []
    real = db_flush._fdatasync

    def recording(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(db_flush, "_fdatasync", recording)
    with contextlib.closing(database(path)) as conn:
        flush = DatabaseFlush(path)
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        seconds = flush.flush()
        assert seconds is not None
        assert seconds >= 0
    assert flushed == [str(path)]
    assert flush.close() is True
    assert not flush.is_open
    assert flush.flush() is None  # closed: nothing to flush, no error


def test_a_failed_flush_fails_every_later_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.sqlite"
    outcomes = iter([OSError(5, "Input/output error"), None])

    def once_failing(fd: int) -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    monkeypatch.setattr(db_flush, "_fdatasync", once_failing)
    with contextlib.closing(database(path)):
        flush = DatabaseFlush(path)
        with pytest.raises(FlushFailed, match="Input/output error"):
            flush.flush()
        # The disk "works" again: the pages it dropped are still lost, so no flush passes.
        with pytest.raises(FlushFailed, match="an earlier fdatasync"):
            flush.flush()
        flush.close()


def test_without_a_descriptor_flushes_do_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.sqlite"
    real_open = os.open

    def refusing(file: str | os.PathLike[str], flags: int, *args: object) -> int:
        if Path(file) == path:
            raise OSError(24, "Too many open files")
        return real_open(file, flags, *args)  # type: ignore[arg-type]

    with contextlib.closing(database(path)):
        monkeypatch.setattr(os, "open", refusing)
        flush = DatabaseFlush(path)
        monkeypatch.undo()
        assert not flush.is_open
        assert flush.flush() is None
        assert flush.close() is True


def test_close_leaves_the_descriptor_to_a_flush_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.sqlite"
    entered, release = threading.Event(), threading.Event()

    def stuck(fd: int) -> None:
        entered.set()
        release.wait(30)

    monkeypatch.setattr(db_flush, "_fdatasync", stuck)
    monkeypatch.setattr(db_flush, "CLOSE_WAIT_S", 0.05)
    with contextlib.closing(database(path)):
        flush = DatabaseFlush(path)
        flusher = threading.Thread(target=flush.flush)
        flusher.start()
        try:
            assert entered.wait(10)
            assert flush.close() is False
            assert flush.is_open
        finally:
            release.set()
            flusher.join(10)
        assert flush.close() is True
        assert not flush.is_open
