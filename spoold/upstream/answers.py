"""What an answer to a batch means, judged strictly: only this server's answers count.

A 2xx is delivery only if its body is the server's batch answer (``inserted``,
``updated``, ``duplicates``, ``errors``, ``total``) and its counts add up to the
batch sent: an upstream URL that reaches another service answering 200 must not
make spoold acknowledge and delete its queue. Likewise a 400/413/422 is about the
items (split, then dead-letter a lone one) only when it is the server's own error
JSON (``{"detail", "error"}`` with one of the server's error codes for that status)
about the body, not the query (``mode``); the same status from a proxy or an older
server is retried, never dead-lettered.
"""

from __future__ import annotations

from typing import Any

from server.contract.errors import ApiError

COUNT_FIELDS = ("inserted", "updated", "duplicates")


def _error_classes() -> set[tuple[int, str]]:
    """(status, code) of every error the server can answer, from its own error classes."""
    found: set[tuple[int, str]] = set()
    pending: list[type[ApiError]] = [ApiError]
    while pending:
        cls = pending.pop()
        found.add((cls.status, cls.code))
        pending.extend(cls.__subclasses__())
    return found


SERVER_ERRORS = frozenset(_error_classes())


def is_server_error(status: int, body: Any) -> bool:
    """Whether ``body`` is the server's error JSON for this status."""
    return (
        isinstance(body, dict)
        and {"detail", "error"} <= body.keys()
        and isinstance(body["error"], str)
        and (status, body["error"]) in SERVER_ERRORS
    )


#: The server's 400 for a malformed presence header names it first (``X-Spoold-Id``,
#: ``X-Spoold-Queued-Since``): every part of the batch is sent with the same headers.
PRESENCE_HEADER_PREFIX = "X-Spoold-"


def about_the_request(body: Any) -> bool:
    """Whether an error is about the request rather than its items - a validation error
    naming only its query (e.g. ``mode``), or a refusal of its presence headers:
    splitting the batch cannot help, dead-lettering would throw it all away."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail.startswith(PRESENCE_HEADER_PREFIX):
        return True
    if not isinstance(detail, list) or not detail:
        return False
    return all(
        isinstance(entry, dict)
        and isinstance(entry.get("loc"), list)
        and entry["loc"][:1] == ["query"]
        for entry in detail
    )


def _count(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def batch_answer_problem(body: Any, items: int) -> str | None:
    """Why ``body`` is not the server's answer to a batch of ``items`` items (None if it is)."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    counts = {}
    for name in (*COUNT_FIELDS, "total"):
        value = _count(body, name)
        if value is None:
            return f"{name!r} is missing or not a count"
        counts[name] = value
    errors = body.get("errors")
    if not isinstance(errors, list):
        return "'errors' is missing or not a list"
    for error in errors:
        index = error.get("index") if isinstance(error, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < items:
            return "an error without a valid item index"
    if counts["total"] != items:
        return f"'total' is {counts['total']}, the batch had {items} items"
    if sum(counts[name] for name in COUNT_FIELDS) + len(errors) != items:
        return "the counts do not add up to the batch"
    return None
