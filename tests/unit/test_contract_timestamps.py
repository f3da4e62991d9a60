"""server.contract.timestamps: canonical instants whose string order is time order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from server.contract.timestamps import (
    TimestampError,
    format_instant,
    normalize_timestamp,
    parse_instant,
    utc_now,
)

# Keep clear of year 1 and year 9999 so any offset can be applied without overflow.
INSTANTS = st.datetimes(
    min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.just(UTC)
)
OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
NAIVE = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))


def spell(moment: datetime, zone: timezone, use_z: bool, timespec: str) -> str:
    """The instant written in another offset, in one of the ISO forms clients send."""
    text = moment.astimezone(zone).isoformat(timespec=timespec)
    if use_z and text.endswith("+00:00"):
        text = text[:-6] + "Z"
    return text


def truncate(moment: datetime, timespec: str) -> datetime:
    if timespec == "seconds":
        return moment.replace(microsecond=0)
    if timespec == "milliseconds":
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return moment


SPELLINGS = st.builds(
    lambda m, z, use_z, ts: (truncate(m, ts), spell(m, z, use_z, ts)),
    INSTANTS,
    OFFSETS,
    st.booleans(),
    st.sampled_from(["auto", "microseconds", "milliseconds", "seconds"]),
)


@settings(max_examples=200, deadline=None)
@given(SPELLINGS)
def test_normalised_form_is_the_instant_in_canonical_utc(case):
    """Any aware spelling normalises to fixed-width UTC text that parses back to the instant."""
    moment, text = case
    canonical = normalize_timestamp(text)
    assert canonical.endswith("+00:00")
    assert len(canonical) == len("2026-01-12T10:30:00.000000+00:00")
    assert datetime.fromisoformat(canonical) == moment
    assert normalize_timestamp(canonical) == canonical


@settings(max_examples=200, deadline=None)
@given(INSTANTS, OFFSETS, OFFSETS, st.booleans())
def test_every_spelling_of_one_instant_normalises_identically(moment, zone_a, zone_b, use_z):
    """Z, +00:00 and any other offset spelling of one instant give the same string."""
    a = normalize_timestamp(spell(moment, zone_a, use_z, "microseconds"))
    b = normalize_timestamp(spell(moment, zone_b, not use_z, "microseconds"))
    c = normalize_timestamp(spell(moment, UTC, True, "microseconds"))
    assert a == b == c


@settings(max_examples=300, deadline=None)
@given(SPELLINGS, SPELLINGS)
def test_string_order_is_instant_order(first, second):
    """Comparing two canonical strings gives the same answer as comparing the instants."""
    (moment_a, text_a), (moment_b, text_b) = first, second
    canon_a, canon_b = normalize_timestamp(text_a), normalize_timestamp(text_b)
    assert (canon_a < canon_b) == (moment_a < moment_b)
    assert (canon_a == canon_b) == (moment_a == moment_b)


@settings(max_examples=200, deadline=None)
@given(NAIVE, st.sampled_from(["T", " "]), st.sampled_from(["auto", "seconds", "minutes"]))
def test_naive_strings_are_always_rejected(moment, separator, timespec):
    """A timestamp without a timezone is never accepted, whatever its shape."""
    with pytest.raises(TimestampError):
        normalize_timestamp(moment.isoformat(sep=separator, timespec=timespec))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_either_normalises_or_raises_timestamp_error(text):
    """No input makes normalisation fail with anything but TimestampError."""
    try:
        canonical = normalize_timestamp(text)
    except TimestampError:
        return
    assert normalize_timestamp(canonical) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+00:01",
        "9999-12-31T23:59:59-00:01",
        "0001-01-01T00:00:00+23:59",
    ],
)
def test_out_of_range_after_conversion_is_a_timestamp_error(text):
    """Instants that overflow when moved to UTC are refused cleanly."""
    with pytest.raises(TimestampError):
        normalize_timestamp(text)


@pytest.mark.parametrize("value", [None, 12, 1.5, b"2026-01-12T10:30:00Z", ["x"]])
def test_non_strings_are_timestamp_errors(value):
    """Only strings are parsed."""
    with pytest.raises(TimestampError):
        parse_instant(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("2026-01-12T10:30:00Z", "2026-01-12T10:30:00.000000+00:00"),
        ("2026-01-12T10:30:00+00:00", "2026-01-12T10:30:00.000000+00:00"),
        ("2026-01-12T16:00:00+05:30", "2026-01-12T10:30:00.000000+00:00"),
        ("  2026-01-12T10:30:00Z ", "2026-01-12T10:30:00.000000+00:00"),
        ("2026-01-12T10:30:00.123456+00:00", "2026-01-12T10:30:00.123456+00:00"),
        ("2026-01-01T00:30:00+01:00", "2025-12-31T23:30:00.000000+00:00"),
    ],
)
def test_guide_examples(text, canonical):
    """The guide's spellings normalise to the documented canonical form."""
    assert normalize_timestamp(text) == canonical


def test_format_instant_refuses_naive():
    """Formatting a naive datetime is an error, not a silent guess."""
    with pytest.raises(TimestampError):
        format_instant(datetime(2026, 1, 12, 10, 30))


def test_utc_now_is_canonical_and_current():
    """utc_now is in canonical form and within a second of the clock."""
    now = utc_now()
    assert normalize_timestamp(now) == now
    assert abs(datetime.fromisoformat(now) - datetime.now(UTC)) < timedelta(seconds=1)


@given(INSTANTS)
def test_format_instant_round_trips(moment):
    """format_instant then parse_instant gives the same instant."""
    assume(moment.tzinfo is not None)
    assert parse_instant(format_instant(moment)) == moment
