"""The dashboard's page tests of tests/server (pages, edges, login, session expiry, too
many groups), run again with the whole app on PostgreSQL: ``make_config`` here names the
database (``database_url``, as TELEMETRY_DATABASE_URL does), so every page reads through
``server.postgres.dashboard``. Same pages, same escaping, same error pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_dashboard_auth import *  # noqa: F403
from test_dashboard_edges import *  # noqa: F403
from test_dashboard_pages import *  # noqa: F403
from test_dashboard_session_expiry import *  # noqa: F403
from test_dashboard_too_many_groups import *  # noqa: F403

from server.config import ServerConfig


@pytest.fixture
def make_config(
    make_config: Callable[..., ServerConfig], pg_migrated_url: str
) -> Callable[..., ServerConfig]:
    """tests/conftest.py's configs, on the test's PostgreSQL schema."""

    def make(**overrides: Any) -> ServerConfig:
        return make_config(**{"database_url": pg_migrated_url, **overrides})

    return make
