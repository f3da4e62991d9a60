"""How the status page writes sizes, durations, counts, instants and URLs."""

from __future__ import annotations

import pytest

from spoold.ui import format as fmt


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(None, "unknown"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * 1024**3, "3.0 GiB")],
)
def test_size(nbytes: int | None, text: str) -> None:
    assert fmt.size(nbytes) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "none"),
        (-3, "0 ms"),
        (0.012, "12 ms"),
        (2.5, "2.5 s"),
        (42.9, "42 s"),
        (95, "1 min 35 s"),
        (3 * 3600 + 7, "3 h 7 s"),
        (2 * 86400 + 5 * 3600 + 59, "2 d 5 h"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert fmt.duration(seconds) == text


def test_counts_rates_and_percentages() -> None:
    assert fmt.count(1234567) == "1\u202f234\u202f567"
    assert fmt.rate(0) == "0"
    assert fmt.rate(0.125) == "0.12"
    assert fmt.rate(1234.4) == "1\u202f234"
    assert fmt.percent(1, 4) == "25.0 %"
    assert fmt.percent(1, 0) == "n/a"
    assert fmt.plural(1, "group") == "1 group"
    assert fmt.plural(0, "group") == "0 groups"
    assert fmt.plural(2000, "group") == "2\u202f000 groups"


def test_instants_round_trip_in_utc() -> None:
    assert fmt.instant(None) is None
    assert fmt.instant(0) == "1970-01-01T00:00:00Z"
    assert fmt.parse_instant("2026-01-12T10:30:00Z") == fmt.parse_instant(
        "2026-01-12T11:30:00+01:00"
    )
    assert fmt.parse_instant("not a time") is None
    assert fmt.parse_instant(None) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8766", "http://127.0.0.1:8766"),
        ("https://user:secret@telemetry.example:8443/base", "https://telemetry.example:8443/base"),
        ("http://token@[::1]:8766/", "http://[::1]:8766/"),
    ],
)
def test_a_url_never_shows_its_credentials(url: str, shown: str) -> None:
    assert fmt.public_url(url) == shown
