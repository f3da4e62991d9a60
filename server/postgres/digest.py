"""Per-agent digests of stored runs, computed the same way on both sides of a migration:
in SQL on PostgreSQL, in Python over the SQLite rows put in PostgreSQL's stored form
(``import_sqlite.stored_row``: NUL-safe text as ``text.encode`` stores it).

A row's text is each column of ``ROW_COLUMNS`` in order, ``N`` for NULL or ``V`` then
the value's length in UTF-8 bytes, ``:`` and the value (integers in decimal): no two
different rows have the same text. An agent's digest is the MD5 of its rows' MD5s (hex)
in id order, so a changed, missing, extra or moved row, in any column (the bookkeeping
ones too: ``snapshot_source``, ``snapshot_seq``, ``reaped_at``, ``sidecar_id``), changes
it. MD5 is a checksum here, not a defence against someone forging rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from server.storage.dump import ROW_COLUMNS

#: An agent's runs: how many, and their digest.
Digests = dict[str, tuple[int, str]]

_AGENT = ROW_COLUMNS.index("agent_name")


def _piece_sql(column: str) -> str:
    return f"coalesce('V' || octet_length({column}::text) || ':' || {column}::text, 'N')"


_ROW_TEXT_SQL = " || ".join(_piece_sql(column) for column in ROW_COLUMNS)
AGENT_DIGESTS_SQL = (
    f"SELECT agent_name, count(*), md5(string_agg(md5({_ROW_TEXT_SQL}), '' ORDER BY id))"
    " FROM agent_runs GROUP BY agent_name"
)


def row_text(stored: Sequence[Any]) -> bytes:
    """A stored row as the text ``AGENT_DIGESTS_SQL`` builds from it."""
    parts = []
    for value in stored:
        if value is None:
            parts.append("N")
            continue
        text = value if type(value) is str else str(value)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        parts.append(f"V{size}:{text}")
    return "".join(parts).encode("utf-8")


class AgentDigests:
    """Feed stored rows in id order (``add``); read the digests (``result``)."""

    def __init__(self) -> None:
        self._hashes: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            agent = row[_AGENT]
            digest = hashlib.md5(row_text(row), usedforsecurity=False).hexdigest()
            found = self._hashes.get(agent)
            if found is None:
                found = self._hashes[agent] = hashlib.md5(usedforsecurity=False)
                self._counts[agent] = 0
            found.update(digest.encode("ascii"))
            self._counts[agent] += 1

    def result(self) -> Digests:
        return {
            agent: (self._counts[agent], found.hexdigest()) for agent, found in self._hashes.items()
        }


async def read_digests(conn: Any) -> Digests:
    """The target's digests (one aggregate over every run)."""
    rows = await conn.fetch(AGENT_DIGESTS_SQL)
    return {row[0]: (int(row[1]), str(row[2])) for row in rows}


def differing(source: Digests, target: Digests) -> list[str]:
    """The agents whose runs differ (on either side only, a count or a digest)."""
    return sorted(
        agent for agent in source.keys() | target.keys() if source.get(agent) != target.get(agent)
    )
