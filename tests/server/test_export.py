"""GET /api/v1/runs/export: the list's runs, whole, streamed, exact in NDJSON and CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.contract.export import CSV_COLUMNS
from server.http import export as export_module
from server.http.runs import DATABASE

EXPORT = "/api/v1/runs/export"

HOSTILE = [
    "plain",
    "comma, inside",
    'quote " inside',
    '""',
    "new\nline",
    "carriage\rreturn",
    "crlf\r\nend",
    "=SUM(A1:A9)",
    "+1+1",
    "-2",
    "@cmd",
    "\tTAB",
    "unicodé € 😀 \u2028",
    "trailing space ",
    ",",
    "\\backslash\\",
    "'quote",
]


async def raw(api: Any, params: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    async with api.client.get(EXPORT, params=params) as response:
        return response.status, await response.read(), dict(response.headers)


async def page_walk(api: Any, params: dict[str, str]) -> list[bytes]:
    """Every run the list gives for these filters, as its own JSON bytes, page by page."""
    found: list[bytes] = []
    cursor = None
    for _ in range(1000):
        query = {**params, "limit": "7"} | ({"cursor": cursor} if cursor else {})
        async with api.client.get("/api/v1/runs", params=query) as response:
            assert response.status == 200
            runs = orjson.loads(await response.read())
            cursor = response.headers.get("X-Next-Cursor")
        found += [orjson.dumps(run) for run in runs]
        if cursor is None:
            return found
    raise AssertionError("the walk did not end")


def stamp(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


async def fleet(api: Any, new_run: Any, n: int = 60) -> None:
    runs = []
    for i in range(n):
        runs.append(
            new_run(
                agent_name=f"agent-{i % 3}",
                job_type=f"job-{i % 4}",
                status=("running", "success", "failure")[i % 3],
                start_time=stamp(i % 10),
                created_at=stamp(i % 13),
                metrics_json={"i": i, "nested": {"x": [1, 2]}},
                error_summary=HOSTILE[i % len(HOSTILE)],
            )
        )
    reply = await api.post("/api/v1/runs/batch", json=runs)
    assert reply.status == 200, reply.body
    assert reply.body["inserted"] == n, reply.body


FILTERS: list[dict[str, str]] = [
    {},
    {"agent_name": "agent-1"},
    {"job_type": "job-2"},
    {"status": "failure"},
    {"agent_name": "agent-0", "job_type": "job-0"},
    {"agent_name": "agent-2", "status": "running"},
    {"created_after": stamp(5)},
    {"created_before": stamp(3), "job_type": "job-1"},
    {"start_time_from": stamp(6), "start_time_to": stamp(2)},
    {"agent_name": "nobody"},
]


@pytest.mark.parametrize("filters", FILTERS)
async def test_ndjson_is_exactly_the_runs_paging_the_list_gives(
    api: Any, new_run: Any, filters: dict[str, str]
) -> None:
    await fleet(api, new_run)
    status, body, headers = await raw(api, {**filters, "format": "ndjson"})
    assert status == 200
    assert headers["Content-Type"] == "application/x-ndjson"
    lines = body.split(b"\n")
    assert lines[-1] == b""  # every line ends with a newline, the last too
    listed = await page_walk(api, filters)
    assert [orjson.dumps(orjson.loads(line)) for line in lines[:-1]] == listed
    for line in lines[:-1]:  # byte for byte the list's rendering of the run
        run = orjson.loads(line)
        one = await api.get(f"/api/v1/runs/{run['event_id']}")
        assert orjson.loads(line) == one.body


@pytest.mark.parametrize("filters", FILTERS[:4])
async def test_csv_rows_are_the_list_runs_with_hostile_text_exact(
    api: Any, new_run: Any, filters: dict[str, str]
) -> None:
    await fleet(api, new_run)
    status, body, headers = await raw(api, {**filters, "format": "csv"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    listed = [orjson.loads(run) for run in await page_walk(api, filters)]
    assert len(rows) - 1 == len(listed)
    for row, run in zip(rows[1:], listed, strict=True):
        record = dict(zip(CSV_COLUMNS, row, strict=True))
        for column in CSV_COLUMNS:
            value = run[column]
            if column in ("metrics_json", "context_json"):
                assert (orjson.loads(record[column]) if record[column] else None) == value
            elif value is None:
                assert record[column] == ""
            else:
                assert record[column] == str(value), column


async def test_csv_round_trips_every_hostile_string(api: Any, new_run: Any) -> None:
    runs = [new_run(error_details=text, item_name=text) for text in HOSTILE]
    for run in runs:
        await api.create(run)
    status, body, _ = await raw(api, {"format": "csv"})
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
    by_id = {row["event_id"]: row for row in rows}
    for run, text in zip(runs, HOSTILE, strict=True):
        assert by_id[run["event_id"]]["error_details"] == text
        assert by_id[run["event_id"]]["item_name"] == text


async def test_csv_formula_escaping_is_opt_in(api: Any, new_run: Any) -> None:
    run = new_run(error_summary='=HYPERLINK("http://x")', item_name="@SUM(1)")
    await api.create(run)
    status, body, _ = await raw(api, {"format": "csv", "escape_formulas": "true"})
    assert status == 200
    row = next(csv.DictReader(io.StringIO(body.decode(), newline="")))
    assert row["error_summary"] == '\'=HYPERLINK("http://x")'
    assert row["item_name"] == "'@SUM(1)"
    assert row["agent_name"] == run["agent_name"]


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
async def test_an_empty_result_is_an_empty_export(api: Any, fmt: str) -> None:
    status, body, _ = await raw(api, {"format": fmt, "agent_name": "nobody"})
    assert status == 200
    expected = b"" if fmt == "ndjson" else (",".join(CSV_COLUMNS) + "\r\n").encode()
    assert body == expected


@pytest.mark.parametrize(
    "params",
    [
        {"format": "xml"},
        {"format": "NDJSON"},
        {"status": "nonsense"},
        {"created_after": "yesterday"},
        {"limit": "10"},
        {"offset": "5"},
        {"cursor": "abc.def"},
        {"escape_formulas": "perhaps"},
    ],
)
async def test_bad_export_parameters_get_422(api: Any, params: dict[str, str]) -> None:
    reply = await api.get(EXPORT, params=params)
    assert reply.status == 422, reply.text
    assert reply.body["error"] == "validation_error"


async def test_export_is_never_taken_for_an_event_id(api: Any, new_run: Any) -> None:
    """A run whose event_id is literally "export" exists alongside the endpoint: the path
    GET /api/v1/runs/export is the export (which holds that run); the run's other routes
    still reach it."""
    run = new_run(event_id="export", item_name="the export run")
    await api.create(run)
    status, body, _ = await raw(api, {})
    assert status == 200
    assert [orjson.loads(line)["event_id"] for line in body.splitlines()] == ["export"]
    patched = await api.patch("/api/v1/runs/export", json={"status": "success"})
    assert patched.status == 200, patched.body
    assert (await api.get("/api/v1/runs/export/commit-url")).body["event_id"] == "export"
    listed = await api.list()
    assert listed[0]["event_id"] == "export"
    assert listed[0]["status"] == "success"


async def test_the_export_is_one_snapshot(api: Any, new_run: Any) -> None:
    """Runs written while an export streams are not in it, and nothing is repeated."""
    runs = [new_run() for _ in range(2500)]
    for start in range(0, 2500, 500):
        await api.post("/api/v1/runs/batch", json=runs[start : start + 500])
    async with api.client.get(EXPORT) as response:
        first = await response.content.readline()
        later = [new_run() for _ in range(300)]
        await api.post("/api/v1/runs/batch", json=later)  # committed mid-stream
        rest = await response.content.read()
    ids = [orjson.loads(line)["event_id"] for line in (first + rest).splitlines()]
    assert len(ids) == len(set(ids)) == 2500
    assert set(ids) == {run["event_id"] for run in runs}


async def test_a_client_that_leaves_releases_the_transaction_at_once(
    api: Any, new_run: Any, tmp_path: Path
) -> None:
    big = "y" * 2000
    runs = [new_run(error_details=big) for _ in range(6000)]  # ~14 MB: more than socket buffers
    for start in range(0, 6000, 1000):
        reply = await api.post("/api/v1/runs/batch", json=runs[start : start + 1000])
        assert reply.status == 200
    metrics = api.client.server.app[_metrics_key()]
    response = await api.client.get(EXPORT)
    await response.content.readline()
    assert metrics.exports_active._value.get() == 1
    response.close()  # the client goes away mid-stream
    for _ in range(200):  # bounded: the server notices at its next write
        if metrics.exports_active._value.get() == 0:
            break
        await asyncio.sleep(0.025)
    assert metrics.exports_active._value.get() == 0
    gone = [metrics.exports.labels(o)._value.get() for o in ("client_gone", "cancelled")]
    assert sum(gone) == 1
    # No reader pins the WAL any more: a write, then a TRUNCATE checkpoint resets it whole.
    await api.create(new_run())
    # (retried: the server's own checkpointer may hold the lock for a moment; a pinned
    # snapshot would keep it busy every time)
    conn = sqlite3.connect(tmp_path / "t.sqlite", timeout=0.1)
    try:
        for _ in range(40):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy == 0:
                break
            await asyncio.sleep(0.025)
    finally:
        conn.close()
    assert busy == 0
    assert api.client.server.app[DATABASE].counts().total_runs == 6001


async def test_a_client_that_stops_reading_is_cut_off_and_releases_the_snapshot(
    api: Any, new_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that keeps the connection open but reads nothing more (a stalled or
    hostile one) must not hold the export's read snapshot (SQLite: the WAL cannot be
    checkpointed past it; PostgreSQL: a pooled connection and the vacuum horizon) for
    as long as it likes: a write that makes no progress for ``STALL_S`` ends the export."""
    monkeypatch.setattr(export_module, "STALL_S", 0.5)
    big = "y" * 2000
    runs = [new_run(error_details=big) for _ in range(6000)]  # ~14 MB: more than socket buffers
    for start in range(0, 6000, 1000):
        reply = await api.post("/api/v1/runs/batch", json=runs[start : start + 1000])
        assert reply.status == 200
    metrics = api.client.server.app[_metrics_key()]
    response = await api.client.get(EXPORT)
    try:
        await response.content.readline()
        assert metrics.exports_active._value.get() == 1
        # ... and nothing more is read: the buffers fill, the server's writes stop.
        for _ in range(400):  # bounded: 20 s at most
            if metrics.exports_active._value.get() == 0:
                break
            await asyncio.sleep(0.05)
        assert metrics.exports_active._value.get() == 0, "a stalled client holds the export"
        assert metrics.exports.labels("client_stalled")._value.get() == 1
    finally:
        response.close()
    await api.create(new_run())  # the store serves on


def _metrics_key() -> Any:
    from server.http.ops import METRICS

    return METRICS


async def test_csv_tells_null_from_empty_text_and_keeps_numbers_bare(
    api: Any, new_run: Any
) -> None:
    run = new_run(item_name="", items_discovered=7)
    await api.create(run)
    status, body, _ = await raw(api, {"format": "csv"})
    assert status == 200
    line = body.decode().split("\r\n")[1]
    fields = next(csv.reader(io.StringIO(line)))
    record = dict(zip(CSV_COLUMNS, fields, strict=True))
    assert record["items_discovered"] == "7"
    assert ',"",' in line  # item_name: empty text, quoted
    assert ",," in line  # a NULL column (e.g. error_summary): nothing at all
    assert record["error_summary"] == ""
    assert record["item_name"] == ""


async def test_head_answers_headers_without_reading_runs(
    api: Any, new_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.storage.export import Export

    await api.create(new_run())
    chunks: list[bytes | None] = []
    original = Export.next_chunk

    def counted(self: Export) -> bytes | None:
        chunk = original(self)
        chunks.append(chunk)
        return chunk

    monkeypatch.setattr(Export, "next_chunk", counted)
    async with api.client.head(EXPORT, params={"format": "csv"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/csv")
        assert await response.read() == b""
    assert chunks == []  # not one chunk read for a HEAD
    async with api.client.get(EXPORT, params={"format": "csv"}) as response:
        await response.read()
    assert len(chunks) == 3  # header, the run, the end


async def test_csv_writes_heartbeat_timeout_as_a_number(api: Any, new_run: Any) -> None:
    """heartbeat_timeout_s is an integer like the counters: bare in CSV, not quoted text."""
    run = new_run(heartbeat_timeout_s=600)
    await api.create(run)
    status, body, _ = await raw(api, {"format": "csv"})
    assert status == 200
    line = body.decode().split("\r\n")[1]
    fields = line.split(",")
    assert fields[CSV_COLUMNS.index("heartbeat_timeout_s")] == "600", line


async def test_stale_filter_exports_only_overdue_runs(make_api: Any, new_run: Any) -> None:
    """``stale=true`` is one of the list's filters: the export holds the same runs as the
    list, never every run (a filter silently dropped)."""
    api = await make_api(reaper_interval_s=3600)
    overdue = new_run(heartbeat_timeout_s=1)
    fresh = new_run(heartbeat_timeout_s=3600)
    await api.create(overdue)
    await api.create(fresh)
    await asyncio.sleep(1.1)
    listed = [run["event_id"] for run in await api.list(stale="true")]
    assert listed == [overdue["event_id"]]
    for fmt in ("ndjson", "csv"):
        status, body, _ = await raw(api, {"stale": "true", "format": fmt})
        assert status == 200, body
        lines = body.decode().splitlines()
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
            assert [row["event_id"] for row in rows] == listed, fmt
        else:
            assert [orjson.loads(line)["event_id"] for line in lines] == listed, fmt
    status, body, _ = await raw(api, {"stale": "maybe"})
    assert status == 422, body
