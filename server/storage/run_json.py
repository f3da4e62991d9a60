"""A page of runs rendered as JSON bytes by SQLite, with no Python object per column.

Building a dict of 42 values per row, parsing its JSON columns and serialising it all
again cost more server CPU than the query itself; so did ``json_object()`` over the 42
columns at every read. Each run's JSON object is therefore rendered once, when it is
written: the STORED generated column ``run_json`` (``schema.rendered_run_sql``,
migration 5), which SQLite recomputes on every INSERT and UPDATE, whoever writes.
A page is then one blob per row; Python only appends the two derived URLs
(``url_suffix``, cached per distinct repository and commit) and joins the rows. The
bytes are those of the Python rendering (``row_to_run`` + ``with_urls`` + orjson), key
order included, which stays as the fallback:

* for a row SQLite cannot render identically, ``run_json`` is NULL: a counter that is
  not an integer, or a JSON column whose text is not already the minified text
  ``json()`` gives back (stored JSON is the server's own orjson output, so that is
  only data written by something else); such rows go the Python way;
* for a whole process whose SQLite escapes strings unlike orjson:
  ``renders_like_orjson`` checks once (the stored objects are then not used).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from server.contract.codec import dumps
from server.contract.urls import build_commit_url, build_repo_url

#: The select list of a rendered page; list queries add ``id`` after it. As few columns
#: as will do: Python's sqlite3 (3.11) releases and retakes the GIL for every column of
#: every row it reads. A NULL ``run_json`` is a row SQLite cannot render exactly.
JSON_COLUMNS = "run_json, git_repo, git_commit_hash, created_at"
#: Where a rendered row holds its created_at (its id is last).
CREATED_AT = 3


@functools.lru_cache(maxsize=4096)  # a page names the same few repositories and commits
def url_suffix(git_repo: str | None, commit_hash: str | None) -> bytes:
    """The end of a run's JSON object: its commit_url and repo_url, then ``}``."""
    commit_url = orjson.dumps(build_commit_url(git_repo, commit_hash))
    repo_url = orjson.dumps(build_repo_url(git_repo))
    return b',"commit_url":' + commit_url + b',"repo_url":' + repo_url + b"}"


def python_rendering(run: dict[str, Any]) -> bytes:
    """A run (as ``row_to_run`` gives it) rendered the Python way, URLs included."""
    return dumps(run)[:-1] + url_suffix(run.get("git_repo"), run.get("git_commit_hash"))


def all_exact(rows: Sequence[Sequence[Any]]) -> bool:
    """Whether every row has its stored rendering (none needs the Python fallback)."""
    return all(row[0] is not None for row in rows)


def render_rows(rows: Sequence[Sequence[Any]], fallback: Callable[[int], bytes]) -> bytes:
    """The JSON array of rendered rows; ``fallback(row_id)`` renders an inexact row."""
    parts = [b"["]
    for body, repo, commit, _, row_id in rows:
        if body is not None:
            parts += (body[:-1], url_suffix(repo, commit), b",")
        else:
            parts += (fallback(row_id), b",")
    if len(parts) > 1:
        parts.pop()  # the last comma
    parts.append(b"]")
    return b"".join(parts)  # one copy of the page


_PROBE_TEXT = "".join(chr(code) for code in range(0x80)) + 'é€\u2028\U0001f600"\\/'


@functools.cache
def renders_like_orjson() -> bool:
    """Whether this process's SQLite has the JSON functions and renders text, integers
    and stored JSON byte for byte as orjson does (checked once, in memory)."""
    values: list[Any] = [_PROBE_TEXT, None, 0, -(2**63), 2**63 - 1, ""]
    stored = orjson.dumps({"k": [_PROBE_TEXT, 1.5, {}, [], None, True]}).decode()
    conn = sqlite3.connect(":memory:")
    try:
        args = ", ".join(f"'{index}', ?" for index in range(len(values)))
        row = conn.execute(f"SELECT json_object({args}, 'j', json(?))", [*values, stored])
        rendered = row.fetchone()[0]
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    expected = {str(index): value for index, value in enumerate(values)}
    expected["j"] = orjson.loads(stored)
    return isinstance(rendered, str) and rendered.encode() == orjson.dumps(expected)
