"""Text PostgreSQL cannot hold: U+0000.

SQLite stores any Python string; PostgreSQL's text type refuses the NUL character, and
the API accepts it in the free-text fields (``error_details``, ``git_branch``, ...; the
identifiers, instants and statuses refuse controls). Refusing it only on this backend
would make the two answer differently, so such a value is stored reversibly: the
marker U+FFFF (a Unicode noncharacter) followed by the value as a JSON string literal
(``\\u0000`` escaped). A value that does not contain NUL and does not start with the
marker, i.e. all ordinary text, is stored as it is; a value starting with the marker
is encoded too, so decoding is never ambiguous. JSON columns need none of this: they
hold the server's own JSON text, where NUL is always escaped.

Equality filters encode their value the same way, so they match exactly what SQLite
matches. Ordering is only ever by instants (canonical text, never encoded).
"""

from __future__ import annotations

from typing import Any

import orjson

MARKER = "\uffff"


def encode(value: Any) -> Any:
    """A value as stored: text with NUL (or starting with the marker) encoded."""
    if type(value) is str and ("\x00" in value or value.startswith(MARKER)):
        return MARKER + orjson.dumps(value).decode()
    return value


def decode(value: Any) -> Any:
    """A stored value as the API knows it (the inverse of ``encode``)."""
    if type(value) is str and value.startswith(MARKER):
        try:
            decoded = orjson.loads(value[1:])
        except orjson.JSONDecodeError:  # not ours (another writer's text): as stored
            return value
        return decoded if type(decoded) is str else value
    return value
