"""The export as asked and answered: its own query options and the CSV header.

Both daemons document the export (spoold relays it), so its shape is contract,
not the server's storage or endpoints.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.contract.run_record import RUN_COLUMNS

#: The list's paging parameters: an export is the whole result, never a page.
PAGING = ("limit", "offset", "cursor")
#: The CSV export's header row: the stored columns, then the two web URLs.
CSV_COLUMNS: tuple[str, ...] = (*RUN_COLUMNS, "commit_url", "repo_url")


class ExportOptions(BaseModel):
    """The export's own query parameters (the rest are the list's filters)."""

    model_config = ConfigDict(extra="ignore")

    format: Literal["ndjson", "csv"] = Field(
        default="ndjson",
        description="`ndjson`: one run per line, as the list renders it. `csv`: a header "
        "row, then one row per run (RFC 4180, UTF-8, CRLF).",
    )
    escape_formulas: bool = Field(
        default=False,
        description="CSV only: prefix `'` to text starting with `=`, `+`, `-`, `@`, TAB or "
        "CR, so spreadsheets do not evaluate it (changes those values).",
    )
