"""Running schemathesis cases for one API operation, bounded and derandomised.

Each operation is its own pytest test (``pytest.mark.parametrize`` over
``labels(document)``). Inside it, schemathesis' test builder runs its coverage
phase (boundary values, missing and wrong-typed fields: a fixed list of cases)
and its fuzzing phase (``examples`` Hypothesis draws, valid and invalid), sends
each case to the real daemon and runs the response checks on the answer.

``create_test`` is schemathesis' own per-operation builder (its pytest plugin
uses it); it is called directly because with pytest 9 the plugin's
``schema.parametrize()`` reports every operation under one unlabelled test id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Response, checks
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)
from schemathesis.specs.openapi import checks as openapi_checks

#: Fixed, so every run sends the same cases and a failure reproduces.
SEED = 20260112
QUICK_EXAMPLES = 25
SLOW_EXAMPLES = 150
REQUEST_TIMEOUT_S = 30
SCHEMA_TIMEOUT_S = 10.0

#: The conformance checks; ``not_a_server_error`` is added where no 5xx is legitimate.
CONFORMANCE = [
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]
ALL_CHECKS = [checks.not_a_server_error, *CONFORMANCE]

ResponseRule = Callable[[Any, Response], None]


def answers_the_run_asked_for(case: Any, response: Response) -> None:
    """A 2xx about one run is about the run in the path, whatever its characters
    (``?``, ``#``, ``%``, dots): schema conformance alone cannot see a proxy that
    reads or updates another run."""
    if "{event_id}" not in case.operation.path or not 200 <= response.status_code < 300:
        return
    if response.status_code == 204:  # no content (a heartbeat): nothing to compare
        return
    requested = urlsplit(response.request.url).path.split("/")[4]  # /api/v1/runs/{id}/...
    body = response.json()
    if isinstance(body, dict) and "event_id" in body:
        assert body["event_id"] == unquote(requested), (case.method, response.request.url, body)


def labels(document: dict[str, Any]) -> list[str]:
    """``METHOD /path`` of every operation in the document, in document order."""
    return [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "put", "delete")
    ]


def served_document(base_url: str) -> dict[str, Any]:
    """What a running daemon serves at /openapi.json, loaded as schemathesis loads it."""
    loaded = schemathesis.openapi.from_url(
        f"{base_url}/openapi.json", wait_for_schema=SCHEMA_TIMEOUT_S
    )
    return dict(loaded.raw_schema)


def load(document: dict[str, Any]) -> Any:
    """The schema, generating valid and invalid cases from a fixed seed."""
    config = SchemathesisConfig.from_dict(
        {"seed": SEED, "generation": {"mode": "all", "deterministic": True}}
    )
    return schemathesis.openapi.from_dict(document, config=config)


def fuzz_operation(
    schema: Any,
    label: str,
    base_url: str,
    *,
    examples: int,
    checks: Sequence[Any] = ALL_CHECKS,
    also: ResponseRule | None = None,
) -> dict[int, int]:
    """Run the coverage cases and ``examples`` fuzzed cases of one operation against
    ``base_url``; returns how often each status was answered."""
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    seen: dict[int, int] = {}
    with requests.Session() as session:

        def check(case: Any) -> None:
            response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            answers_the_run_asked_for(case, response)
            if also is not None:
                also(case, response)
            case.validate_response(response, checks=list(checks))

        config = HypothesisTestConfig(
            project=schema.config,
            modes=[HypothesisTestMode.COVERAGE, HypothesisTestMode.FUZZING],
            settings=settings(
                max_examples=examples,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
        create_test(operation=operation, test_func=check, config=config)()
    return seen
