"""schemathesis drives the real telemetry-server from its own ``/openapi.json``, on SQLite
and on PostgreSQL (``fuzzed_server``): no 5xx, and every answer's status, content type,
headers and body are documented.

Cases are generated from ``server.app.openapi_document()`` so that each operation is
its own test; ``test_fuzzed_document_is_the_served_one`` proves it is exactly what
the running server serves at ``/openapi.json``.
"""

from __future__ import annotations

import pytest
from daemons import Daemon
from fuzzing import QUICK_EXAMPLES, SLOW_EXAMPLES, fuzz_operation, labels, load, served_document

from server.app import openapi_document

pytestmark = pytest.mark.integration

DOCUMENT = openapi_document()
SCHEMA = load(DOCUMENT)


def test_fuzzed_document_is_the_served_one(fuzzed_server: Daemon) -> None:
    """The schema the cases come from is what the server serves at /openapi.json."""
    assert served_document(fuzzed_server.url) == DOCUMENT


@pytest.mark.parametrize("operation", labels(DOCUMENT))
def test_server_answers_as_documented(operation: str, fuzzed_server: Daemon) -> None:
    """Bounded examples of one operation against the real server process."""
    seen = fuzz_operation(SCHEMA, operation, fuzzed_server.url, examples=QUICK_EXAMPLES)
    assert seen


@pytest.mark.slow
@pytest.mark.parametrize("operation", labels(DOCUMENT))
def test_server_answers_as_documented_larger_run(operation: str, fuzzed_server: Daemon) -> None:
    """The same checks with more examples per operation."""
    seen = fuzz_operation(SCHEMA, operation, fuzzed_server.url, examples=SLOW_EXAMPLES)
    assert seen
