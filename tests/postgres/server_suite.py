"""Which tests of tests/server run on PostgreSQL too, and which stay on SQLite, with why.

``test_pg_server_suite`` collects every module of ``ON_BOTH`` again with the whole app on
PostgreSQL (this directory's ``make_api``: the config names the database, as
TELEMETRY_DATABASE_URL does). ``test_pg_suite_inventory`` checks that every test module
of tests/server is in exactly one table here, so a new module is a decision, not an
accident. Within a module run on both, three kinds of test are left out on PostgreSQL
(``deselect``, called from this directory's conftest):

- a test that starts no app (neither ``make_api`` nor ``make_config`` is among its
  fixtures) reaches no database, or only a SQLite file of its own: a pure function, the
  OpenAPI document, a setting. Run again it would repeat the SQLite run, so it runs once;
- the tests of ``SQLITE_ONLY_TESTS``, each with its reason;
- nothing else: a difference in answers is a bug of a backend, fixed there.

Elsewhere: tests/fuzz drives the server process on both backends (``fuzzed_server``);
tests/unit holds no test of the server through its API (pure functions, and SQLite's own
helpers: test_sqlite_connect, test_sqlite_errors, test_server_distinct_values,
test_server_counter_order, test_dashboard_queries), so it runs once.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest

#: Modules whose every app-level test holds on both backends (those below excepted).
ON_BOTH: tuple[str, ...] = (
    "test_admission",
    "test_auth_and_rate_limit",
    "test_export",
    "test_http_errors",
    "test_list_cursor",
    "test_metadata_kept",
    "test_metrics_counters",
    "test_openapi",
    "test_ops_endpoints",
    "test_protect_reads",
    "test_reference_client_compat",
    "test_request_logs",
    "test_retention",
    "test_runs_batch",
    "test_runs_commits",
    "test_runs_create",
    "test_runs_query",
    "test_runs_update",
    "test_stale_presence_window",
    "test_stale_runs",
    "test_stats",
    "test_stats_after_reap_and_prune",
    "test_stats_huge_totals",
    "test_storage_lifecycle",
)

#: Modules about SQLite itself: its file, writer thread, readers, SQL and migrations.
SQLITE_ONLY_MODULES: dict[str, str] = {
    "test_checkpoint_flush": "SQLite's checkpoint thread flushing the main file it copied into",
    "test_contention": "a second sqlite3 connection holds the file's write lock",
    "test_export_close_race": "SQLite's Export closing its connection under a running"
    " statement (the SIGSEGV); PostgreSQL's export runs test_export on both",
    "test_health_isolation": "/health's own SQLite connection beside saturated reader"
    " threads; PostgreSQL's /health in an outage: test_pg_outage_http",
    "test_inline_reads": "SQLite's reader: reads on the event loop's connection, then threads",
    "test_metric_labels": "no database: the HTTP layer's Prometheus labels (own app)",
    "test_migration_9_answers": "SQLite's migration 9 on a version-8 file",
    "test_migration_11_late": "SQLite's migration 11 (the late flag) on a version-10 file",
    "test_late_windows": "SQLite's late-run indexes under start_time windows (migration 11)",
    "test_null_literals": "SQLite statements that spell NULL, and SQLite's column types",
    "test_query_plans": "SQLite's query plans (EXPLAIN QUERY PLAN)",
    "test_run_deltas_exact": "the counts SQLite's writer keeps, through savepoint rollbacks"
    " (the /metrics answers run on both in test_metrics_counters)",
    "test_run_json": "SQLite renders list pages with its JSON functions",
    "test_run_json_stored": "SQLite's stored run_json column (migration 5)",
    "test_snapshot_order_migration": "SQLite's migration; PostgreSQL's: test_pg_migrations",
    "test_sqlite_version": "the SQLite library's version",
    "test_stats_rollups": "SQLite's rollup tables and triggers (PostgreSQL keeps none)",
    "test_wal_checkpoints": "SQLite's WAL checkpoints",
    "test_writer_groups": "SQLite's writer thread: group commit and savepoints",
    "test_writer_supervision": "SQLite's writer thread dying or failing a group"
    " (PostgreSQL has none: a pooled connection per request; outages: test_pg_outage_http)",
}

#: The dashboard's page tests: run again on PostgreSQL by test_pg_dashboard_pages.py (whose
#: ``make_config`` builds the whole app on PostgreSQL), beside test_pg_dashboard.py's parity crawl.
DASHBOARD_MODULES: tuple[str, ...] = (
    "test_dashboard_auth",
    "test_dashboard_edges",
    "test_dashboard_pages",
    "test_dashboard_session_expiry",
    "test_dashboard_too_many_groups",
)

#: ``module::test`` or ``module::test[params]`` (``params``: an fnmatch pattern over
#: pytest's parameter id) of tests in ``ON_BOTH`` modules that are about SQLite, each
#: with its reason.
SQLITE_ONLY_TESTS: dict[str, str] = {
    "test_admission::test_a_write_counts_until_the_writer_has_committed_it": "holds"
    " SQLite's write lock from another connection and watches SQLite's writer queue",
    "test_export::test_a_client_that_leaves_releases_the_transaction_at_once": "opens"
    " SQLite's file to check its read transaction ended",
    "test_export::test_head_answers_headers_without_reading_runs": "counts the chunks of"
    " SQLite's Export class",
    "test_metadata_kept::test_metadata_runs_no_query": "replaces SQLite's reader pool",
    "test_metadata_kept::test_failed_group_leaves_no_value": "a group failing in SQLite's"
    " writer thread",
    "test_metrics_counters::test_metrics_runs_no_query": "replaces SQLite's reader pool",
    "test_metrics_counters::test_rejected_and_failed_writes_are_not_counted": "a group"
    " failing in SQLite's writer thread",
    "test_openapi::test_each_documented_status_really_happens[*-503]": "503 from a lock"
    " another process holds on SQLite's file; PostgreSQL's 503s: test_pg_outage_http",
    "test_ops_endpoints::test_health_reports_configured_modes[*]": "SQLite's journal and"
    " synchronous modes",
    "test_retention::test_prune_racing_patches_never_deletes_a_running_run": "drives"
    " SQLite's prune_pass on its writer thread in batches of 10",
    "test_retention::test_deletes_fire_persistent_triggers_on_agent_runs": "a SQLite"
    " trigger installed through the writer thread",
    "test_retention::test_new_files_give_space_back_after_a_prune": "SQLite's incremental"
    " VACUUM and page counts",
    "test_stats::test_deleted_runs_leave_the_stats": "deletes rows through SQLite's file"
    " (test_pg_stats_parity deletes through retention instead)",
    "test_storage_lifecycle::test_v1_database_upgrades_in_place_and_keeps_rows": "SQLite's"
    " migrations on a version-1 file",
    "test_storage_lifecycle::test_upgraded_database_has_the_filter_indexes": "SQLite's"
    " indexes after its migrations",
    "test_storage_lifecycle::test_newer_schema_refuses_to_open": "SQLite's user_version"
    " (PostgreSQL's newer schema: test_pg_migrations)",
    "test_storage_lifecycle::test_fresh_database_is_created_with_parent_directories": "the"
    " SQLite file's directory",
    "test_storage_lifecycle::test_write_lock_held_elsewhere_gives_503_and_health_answers": "a"
    " second sqlite3 connection holds the file's write lock",
}


def sqlite_only_reason(module: str, name: str) -> str | None:
    """Why the test ``name`` (pytest's name) of tests/server's ``module`` stays on SQLite."""
    test, _, params = name.partition("[")
    for pattern, reason in SQLITE_ONLY_TESTS.items():
        where, _, wanted = pattern.partition("[")
        if where != f"{module}::{test}":
            continue
        if not wanted or fnmatchcase(params.removesuffix("]"), wanted.removesuffix("]")):
            return reason
    return None


def deselect(items: list[pytest.Item]) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """Split the items of ``test_pg_server_suite`` into those kept and those left out."""
    kept: list[pytest.Item] = []
    left: list[pytest.Item] = []
    for item in items:
        function = getattr(item, "function", None)
        module = getattr(function, "__module__", "")
        reruns = item.path.name == "test_pg_server_suite.py" and module in ON_BOTH
        fixtures = getattr(item, "fixturenames", ())
        starts_app = "make_api" in fixtures or "make_config" in fixtures
        if reruns and (not starts_app or sqlite_only_reason(module, item.name) is not None):
            left.append(item)
        else:
            kept.append(item)
    return kept, left
