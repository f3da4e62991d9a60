"""The dashboard's SVG charts and formatting: readable without scripts (a title, axis
labels, one mark per value with its own title), escaped, and never styled inline."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from server.ui.charts import duration_chart, sparkline
from server.ui.format import ago, duration, query, segment, when

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(
        str(markup).replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
    )


def test_duration_chart_has_title_axes_and_a_mark_per_value() -> None:
    days = ["2026-06-01", "2026-06-02", "2026-06-03"]
    svg = parse(duration_chart(days, [1000, None, 3000], [2000, None, 90_000], "A <b> & c"))
    assert svg.find(f"{SVG}title").text == "A <b> & c"  # escaped in the markup, text here
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "06-01" in texts
    assert "06-03" in texts
    assert "UTC day (month-day)" in texts
    assert "1 min 30 s" in texts  # the axis' top: the largest p95
    marks = [m.find(f"{SVG}title").text for m in svg if m.tag in (f"{SVG}circle", f"{SVG}rect")]
    assert marks == ["2026-06-01: p95 2.0 s", "2026-06-03: p95 1 min 30 s",
                     "2026-06-01: p50 1.0 s", "2026-06-03: p50 3.0 s"]  # fmt: skip
    for element in svg.iter():
        assert "style" not in element.attrib


def test_a_chart_without_data_still_draws() -> None:
    svg = parse(duration_chart(["2026-06-01"], [None], [None], "empty"))
    assert svg.find(f"{SVG}title").text == "empty"


def test_sparkline_says_total_and_peak() -> None:
    svg = parse(sparkline([0, 3, 1, 0, 7], "job <x>: runs per hour"))
    assert svg.find(f"{SVG}title").text == "job <x>: runs per hour: 11 runs, peak 7 per hour"
    assert len(svg.findall(f"{SVG}rect")) == 3


@given(st.lists(st.integers(min_value=0, max_value=10**9), max_size=200))
def test_sparkline_of_any_counts_is_valid_svg(counts: list[int]) -> None:
    parse(sparkline(counts, "t"))


def test_durations_read_as_people_say_them() -> None:
    assert duration(None) == "—"
    assert duration(450) == "450 ms"
    assert duration(12_340) == "12.3 s"
    assert duration(245_000) == "4 min 05 s"
    assert duration(7_800_000) == "2 h 10 min"
    assert duration(3 * 86_400_000 + 3_600_000) == "3 d 1 h"


def test_instants_and_links() -> None:
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert when("2026-06-01T10:30:00.000000+00:00") == "2026-06-01 10:30:00 UTC"
    assert when("not a time") == "not a time"
    assert when(None) == "—"
    assert ago((now - timedelta(hours=3, minutes=12)).isoformat(), now) == "3 h 12 min ago"
    assert ago("garbage", now) == ""
    assert segment("a b/c?d%e#f") == "a%20b%2Fc%3Fd%25e%23f"
    assert query({"a": "x y", "b": None, "c": ""}) == "?a=x+y"
    assert query({}) == ""
