"""The sidecar id file: made once, kept, and never trusted blindly (spoold.identity)."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from spoold.identity import SIDECAR_ID_FILE, load_sidecar_id

HEX = re.compile(r"[0-9a-f]{32}")


def test_first_start_writes_a_uuid4_hex_and_later_starts_keep_it(tmp_path: Path) -> None:
    first = load_sidecar_id(tmp_path)
    assert HEX.fullmatch(first.value)
    assert first.persisted
    assert (tmp_path / SIDECAR_ID_FILE).read_text() == first.value + "\n"
    assert load_sidecar_id(tmp_path).value == first.value
    assert not [p for p in tmp_path.iterdir() if p.name != SIDECAR_ID_FILE]  # no temp left


def test_an_operator_pinned_id_is_kept(tmp_path: Path) -> None:
    (tmp_path / SIDECAR_ID_FILE).write_text("build-host_07.eu-west\n")
    assert load_sidecar_id(tmp_path).value == "build-host_07.eu-west"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n\n  \n",
        b"abc\r\nX-Injected: 1\r\n",
        b"has space",
        b"x" * 65,
        "caf\u00e9".encode(),
        b"\xff\xfe\x00\x01",
        b"\x00" * 32,
        b"a" * 1_000_000,
    ],
    ids=[
        "empty",
        "blank",
        "header-injection",
        "space",
        "too-long",
        "non-ascii",
        "binary",
        "nul",
        "huge",
    ],
)
def test_a_corrupt_or_hostile_file_is_replaced_by_a_fresh_id(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / SIDECAR_ID_FILE
    path.write_bytes(content)
    got = load_sidecar_id(tmp_path)
    assert HEX.fullmatch(got.value)
    assert got.persisted
    assert path.read_text() == got.value + "\n"
    assert load_sidecar_id(tmp_path).value == got.value


def test_a_symlink_is_not_followed_and_its_target_is_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("valid-looking-id\n")
    (tmp_path / "spool").mkdir()
    link = tmp_path / "spool" / SIDECAR_ID_FILE
    link.symlink_to(target)
    got = load_sidecar_id(tmp_path / "spool")
    assert HEX.fullmatch(got.value)
    assert target.read_text() == "valid-looking-id\n"
    assert not link.is_symlink()
    assert link.read_text() == got.value + "\n"


def test_a_fifo_does_not_block_start_up(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / SIDECAR_ID_FILE)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(load_sidecar_id(tmp_path).value))
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading the sidecar id blocked on a FIFO"
    assert HEX.fullmatch(result[0])


def test_an_unwritable_place_gives_an_id_for_this_process_only(tmp_path: Path) -> None:
    (tmp_path / SIDECAR_ID_FILE).mkdir()  # cannot be read as a file nor replaced by one
    first = load_sidecar_id(tmp_path)
    assert HEX.fullmatch(first.value)
    assert not first.persisted
    second = load_sidecar_id(tmp_path)
    assert HEX.fullmatch(second.value)
    assert second.value != first.value
    assert (tmp_path / SIDECAR_ID_FILE).is_dir()
