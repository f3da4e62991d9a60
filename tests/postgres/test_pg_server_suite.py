"""The tests of tests/server, run again with the whole app on PostgreSQL (``make_api`` in
this directory's conftest: the config names the database, as TELEMETRY_DATABASE_URL
does): same statuses, same bodies, same stored rows (``tests/stored_rows.py`` reads
either backend).

Which modules are here, which stay on SQLite, and which of their tests are left out on
PostgreSQL, each with its reason: ``server_suite`` (checked by ``test_pg_suite_inventory``).
A test name or a fixture defined in two of these modules would hide one of them here;
the inventory test checks there is none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_admission import *  # noqa: F403
from test_auth_and_rate_limit import *  # noqa: F403
from test_export import *  # noqa: F403
from test_http_errors import *  # noqa: F403
from test_list_cursor import *  # noqa: F403
from test_metadata_kept import *  # noqa: F403
from test_metrics_counters import *  # noqa: F403
from test_openapi import *  # noqa: F403
from test_ops_endpoints import *  # noqa: F403
from test_protect_reads import *  # noqa: F403
from test_reference_client_compat import *  # noqa: F403
from test_request_logs import *  # noqa: F403
from test_retention import *  # noqa: F403
from test_runs_batch import *  # noqa: F403
from test_runs_commits import *  # noqa: F403
from test_runs_create import *  # noqa: F403
from test_runs_query import *  # noqa: F403
from test_runs_update import *  # noqa: F403
from test_stale_presence_window import *  # noqa: F403
from test_stale_runs import *  # noqa: F403
from test_stats import *  # noqa: F403
from test_stats_after_reap_and_prune import *  # noqa: F403
from test_stats_huge_totals import *  # noqa: F403
from test_storage_lifecycle import *  # noqa: F403

from server.config import ServerConfig


@pytest.fixture
def make_config(make_config: Callable[..., ServerConfig], pg_migrated_url: str) -> Any:
    """Configs that name the database (as TELEMETRY_DATABASE_URL does): a test that builds
    its own app from a config (test_admission's app served on a real socket) gets it on
    PostgreSQL too. Only here: tests/postgres' comparisons make SQLite configs."""

    def make(**overrides: Any) -> ServerConfig:
        return make_config(**{"database_url": pg_migrated_url, **overrides})

    return make
