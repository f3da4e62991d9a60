"""SPOOLD_UPSTREAM_URL as a list: each item validated as a single URL is, and a list that
cannot be meant (a duplicate, an empty item) stops spoold with a message naming the
variable - never echoing a credential."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spoold.config import ConfigError, SpooldConfig

BAD_LISTS = [
    pytest.param("http://127.0.0.1:1,http://127.0.0.1:1", "repeats item 1", id="duplicate"),
    pytest.param("http://a.example,http://A.EXAMPLE:80/", "repeats item 1", id="same-host-spelt-2"),
    pytest.param("http://127.0.0.1:1,,http://127.0.0.1:2", "item 2 of 3 is empty", id="empty"),
    pytest.param("http://127.0.0.1:1,", "item 2 of 2 is empty", id="trailing-comma"),
    pytest.param(",http://127.0.0.1:1", "item 1 of 2 is empty", id="leading-comma"),
    pytest.param("http://127.0.0.1:1,ftp://127.0.0.1:2", "item 2 of 2 must be an http", id="ftp"),
    pytest.param("http://127.0.0.1:1,127.0.0.1:2", "item 2 of 2 must be an http", id="no-scheme"),
    pytest.param("http://127.0.0.1:1,http://:2", "item 2 of 2 has no host", id="no-host"),
    pytest.param("http://127.0.0.1:1,http://h:99999", "item 2 of 2 is not a valid", id="port"),
]


@pytest.mark.parametrize(("value", "message"), BAD_LISTS)
def test_a_bad_list_is_a_config_error_naming_the_variable_and_the_item(
    value: str, message: str
) -> None:
    """Each bad list: ConfigError naming SPOOLD_UPSTREAM_URL and which item is wrong."""
    with pytest.raises(ConfigError) as caught:
        SpooldConfig.from_env({"SPOOLD_UPSTREAM_URL": value})
    assert "SPOOLD_UPSTREAM_URL" in str(caught.value)
    assert message in str(caught.value)


def test_a_good_list_keeps_its_order_and_drops_trailing_slashes_and_spaces() -> None:
    """The preference order is the order written; a single URL is a list of one."""
    config = SpooldConfig.from_env(
        {"SPOOLD_UPSTREAM_URL": " https://b.example:8766/ , https://a.example:8766"}
    )
    assert config.upstream_urls == ("https://b.example:8766", "https://a.example:8766")
    assert config.upstream_url == "https://b.example:8766,https://a.example:8766"
    single = SpooldConfig.from_env({"SPOOLD_UPSTREAM_URL": "http://127.0.0.1:9/"})
    assert single.upstream_urls == ("http://127.0.0.1:9",)
    assert single.upstream_url == "http://127.0.0.1:9"


def test_credentials_in_any_item_with_a_token_are_refused_without_echoing_them() -> None:
    """One token for all: an item with user:password@ could never be sent (aiohttp refuses
    both); the message names the item, not the secret."""
    with pytest.raises(ConfigError) as caught:
        SpooldConfig.from_env(
            {
                "SPOOLD_UPSTREAM_URL": "http://127.0.0.1:1,http://fleet:s3cr3t-pw@127.0.0.1:2",
                "SPOOLD_UPSTREAM_TOKEN": "t0ken",
            }
        )
    assert "SPOOLD_UPSTREAM_URL" in str(caught.value)
    assert "(item 2)" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)


def test_a_ca_file_needs_every_item_on_https(tmp_path: Path) -> None:
    """One CA file for all: a plain http:// item would send batches in clear text."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    with pytest.raises(ConfigError) as caught:
        SpooldConfig.from_env(
            {
                "SPOOLD_UPSTREAM_URL": "https://a.example,http://b.example",
                "SPOOLD_UPSTREAM_CA_FILE": str(ca),
            }
        )
    assert "SPOOLD_UPSTREAM_CA_FILE" in str(caught.value)
    assert "(item 2)" in str(caught.value)
    SpooldConfig.from_env(
        {
            "SPOOLD_UPSTREAM_URL": "https://a.example,https://b.example",
            "SPOOLD_UPSTREAM_CA_FILE": str(ca),
        }
    )


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:1,http://127.0.0.1:1",
        "http://127.0.0.1:1,,http://127.0.0.1:2",
        "http://127.0.0.1:1,gopher://u:hunter2@127.0.0.1:2",
    ],
    ids=["duplicate", "empty", "bad-scheme"],
)
def test_spoold_refuses_to_start_on_a_bad_list(tmp_path: Path, value: str) -> None:
    """The daemon itself: exit status 2, one line naming the variable, no spool created."""
    env = {**os.environ, "SPOOLD_UPSTREAM_URL": value, "SPOOLD_SPOOL_DIR": str(tmp_path / "s")}
    done = subprocess.run(
        [sys.executable, "-m", "spoold", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("spoold: configuration error: SPOOLD_UPSTREAM_URL"), done.stderr
    assert "hunter2" not in done.stderr
    assert not (tmp_path / "s").exists()
