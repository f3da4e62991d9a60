"""CSV lines rendered by SQLite: each run's line is one string, Python only joins them.

Rendering 44 fields per row through Python's ``csv`` module held an export to
~25,000 rows/s; SQLite's string functions write the same RFC 4180 text in the
query itself. Numbers are bare, NULL is an empty field, and text is always
quoted (quotes doubled), so unlike a minimal-quoting writer an empty text
(``""``) stays distinct from NULL (an empty field) in the bytes.

With ``escape_formulas``, text starting with ``=``, ``+``, ``-``, ``@``, TAB or CR
gets a leading ``'`` (OWASP's advice against CSV injection).
"""

from __future__ import annotations

import functools

from server.contract.export import CSV_COLUMNS
from server.contract.run_record import RUN_COLUMNS, RUN_COUNTER_COLUMNS, RUN_STALENESS_COLUMNS
from server.contract.urls import build_commit_url, build_repo_url

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CRLF = "\r\n"
_QUOTE = '"'
_SQL_STARTS = ", ".join(f"char({ord(c)})" for c in FORMULA_STARTS)


def quote_text(value: str | None) -> str:
    """One field as the SQL below writes text: quoted, quotes doubled; None empty."""
    if value is None:
        return ""
    return _QUOTE + value.replace(_QUOTE, _QUOTE * 2) + _QUOTE


def header() -> bytes:
    return (",".join(CSV_COLUMNS) + CRLF).encode()


#: Integer columns: written bare.
_INTEGERS = frozenset((*RUN_COUNTER_COLUMNS, *RUN_STALENESS_COLUMNS))
#: Text columns that are never NULL (no test needed).
_NOT_NULL = frozenset(
    ("event_id", "run_id", "agent_name", "job_type", "status", "start_time", "created_at")
)


def _field(column: str, *, escape_formulas: bool) -> str:
    text = column
    if escape_formulas:
        text = (
            f"(CASE WHEN substr({column}, 1, 1) IN ({_SQL_STARTS}) "
            f"THEN char(39) || {column} ELSE {column} END)"
        )
    quoted = f"char(34) || replace({text}, char(34), char(34, 34)) || char(34)"
    if column in _INTEGERS:  # integers (another writer's text: quoted; NULL: empty)
        return (
            f"(CASE typeof({column}) WHEN 'integer' THEN {column} WHEN 'null' THEN ''"
            f" ELSE {quoted} END)"
        )
    if column in _NOT_NULL:
        return quoted
    # JSON columns too: their stored text (the server's own JSON)
    return f"(CASE WHEN {column} IS NULL THEN '' ELSE {quoted} END)"


@functools.cache
def select_list(*, escape_formulas: bool) -> str:
    """A CSV chunk's select list: the line without its URLs and line end, then
    created_at (the walk's position), git_repo and git_commit_hash (the URLs)."""
    line = " || ',' || ".join(_field(c, escape_formulas=escape_formulas) for c in RUN_COLUMNS)
    return f"{line}, created_at, git_repo, git_commit_hash"


#: Where a CSV row holds its created_at.
CREATED_AT = 1


@functools.lru_cache(maxsize=4096)  # a chunk names the same few repositories and commits
def line_end(git_repo: str | None, commit_hash: str | None) -> str:
    """The end of a line: commit_url, repo_url and CRLF."""
    commit_url = build_commit_url(git_repo, commit_hash)
    repo_url = build_repo_url(git_repo)
    return f",{quote_text(commit_url)},{quote_text(repo_url)}{CRLF}"
