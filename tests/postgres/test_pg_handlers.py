"""The run endpoints' handler tests of tests/server, run again with the endpoints on
PostgreSQL (``make_api`` in this directory's conftest): same statuses, same bodies."""

from __future__ import annotations

from test_list_cursor import *  # noqa: F403
from test_runs_batch import *  # noqa: F403
from test_runs_query import *  # noqa: F403
from test_runs_update import *  # noqa: F403
