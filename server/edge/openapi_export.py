"""The OpenAPI operation of the export both daemons serve (kept apart from ``openapi``'s tables)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.contract.export import CSV_COLUMNS, PAGING, ExportOptions

if TYPE_CHECKING:
    from server.edge.openapi import ApiVariant

_Schema = dict[str, Any]
OpBuilder = Callable[..., _Schema]

EXPORT_DESCRIPTION = f"""\
Every run the list's filters match (the same runs, in the same order, as walking
`GET /api/v1/runs` with `cursor`), streamed in chunks: memory stays constant whatever the
size. The whole export is one consistent snapshot, taken when the request arrives; runs
written meanwhile are not in it. A long export keeps the WAL from being checkpointed past
its snapshot (the WAL file grows until it ends).

* `ndjson` (`application/x-ndjson`): one run per line, the JSON object the list answers.
* `csv` (`text/csv; charset=utf-8`): RFC 4180, UTF-8 without BOM, CRLF line ends; a header
  row `{",".join(CSV_COLUMNS)}`; numbers bare, NULL an empty field, text always quoted
  (quotes doubled; an empty text is `""`); `metrics_json` and `context_json` are their JSON
  text. Text is exported exactly as stored; with `escape_formulas=true`, text starting with
  `=`, `+`, `-`, `@`, TAB or CR gets a leading `'` (CSV injection: spreadsheets then show
  it rather than evaluate it).

The path is never an event_id: a run whose event_id is `export` is in the export and the
list, and its PATCH and other sub-paths work. The paging parameters (`limit`, `offset`,
`cursor`) are refused with 422. An error while streaming (after the 200) cuts the body
short: a complete NDJSON export ends with a newline, a complete CSV with CRLF."""


def export_op(variant: ApiVariant, op: OpBuilder, list_params: list[_Schema]) -> _Schema:
    params = [p for p in list_params if p["name"] not in PAGING]
    schema = ExportOptions.model_json_schema()
    for name, prop in schema["properties"].items():
        param_schema = {k: v for k, v in prop.items() if k not in ("title", "description")}
        params.insert(
            0 if name == "format" else 1,
            {
                "name": name,
                "in": "query",
                "description": prop["description"],
                "schema": param_schema,
            },
        )
    operation = op("exportRuns", "/api/v1/runs/export", variant, params=params)
    text = {"type": "string"}
    operation["responses"]["200"]["content"] = {
        "application/x-ndjson": {"schema": copy.deepcopy(text)},
        "text/csv": {"schema": copy.deepcopy(text)},
    }
    operation["description"] = EXPORT_DESCRIPTION
    return operation
