"""The stats handler tests of tests/server, run again with the whole app on PostgreSQL
(``make_api`` in this directory's conftest), as ``test_pg_handlers`` does for the rest:
same statuses, same bodies.

Left out, each with its reason: ``test_deleted_runs_leave_the_stats`` deletes rows
through SQLite's file (``test_pg_stats_parity`` deletes through retention instead);
``test_stats_rollups`` is about SQLite's rollup tables and triggers (PostgreSQL keeps
none: ``server.postgres.stats``; its one test of answers alone, of the histogram, needs
no database). ``test_stats_after_reap_and_prune`` runs here whole: the real reaper, late
updates and the prune endpoint on PostgreSQL, the answers recomputed from its rows."""

from __future__ import annotations

from test_stats import *  # noqa: F403
from test_stats_after_reap_and_prune import *  # noqa: F403
from test_stats_huge_totals import *  # noqa: F403

del test_deleted_runs_leave_the_stats  # noqa: F821
