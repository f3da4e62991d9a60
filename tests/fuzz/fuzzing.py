"""Running schemathesis cases for one API operation, bounded and derandomised.

Each operation is its own pytest test (``pytest.mark.parametrize`` over
``labels(document)``); inside it, Hypothesis draws schemathesis cases — valid
ones and, where the operation takes input, invalid ones — sends each to the real
daemon and runs the response checks on the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, Response, checks
from schemathesis.specs.openapi import checks as openapi_checks

#: Fixed, so every run sends the same cases and a failure reproduces.
SEED = 20260112
QUICK_EXAMPLES = 30
SLOW_EXAMPLES = 150

#: The conformance checks; ``not_a_server_error`` is added where no 5xx is legitimate.
CONFORMANCE = [
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]
ALL_CHECKS = [checks.not_a_server_error, *CONFORMANCE]

ResponseRule = Callable[[Any, Response], None]


def labels(document: dict[str, Any]) -> list[str]:
    """``METHOD /path`` of every operation in the document, in document order."""
    return [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "put", "delete")
    ]


def load(document: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_dict(document)


def fuzz_operation(
    schema: Any,
    label: str,
    base_url: str,
    *,
    examples: int,
    checks: Sequence[Any] = ALL_CHECKS,
    also: ResponseRule | None = None,
) -> dict[int, int]:
    """Send ``examples`` generated cases of one operation; returns how often each status came."""
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    has_input = bool(operation.definition.raw.get("parameters")) or (
        "requestBody" in operation.definition.raw
    )
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    if has_input:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    seen: dict[int, int] = {}
    with requests.Session() as session:

        @settings(
            max_examples=examples,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        @given(case=st.one_of(strategies))
        def run(case: Any) -> None:
            response = case.call(base_url=base_url, session=session, timeout=30)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if also is not None:
                also(case, response)
            case.validate_response(response, checks=list(checks))

        run()
    return seen
