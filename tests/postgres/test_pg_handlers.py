"""Handler tests of tests/server, run again with the whole app on PostgreSQL
(``make_api`` in this directory's conftest: the config names the database, as
TELEMETRY_DATABASE_URL does): same statuses, same bodies.

Whole modules where every test holds on both backends; from test_runs_create, the
tests that store something (its other ~200 cases are validation, answered before any
storage is touched, so they would only repeat the SQLite run); from test_stale_runs,
the heartbeat endpoint and seen_at (the rest reads SQLite's file directly). Left out
of a module, each with its reason: tests that reach into SQLite's file or its export
class. The stats tests are run again in ``test_pg_stats_handlers``."""

from __future__ import annotations

from test_admission import *  # noqa: F403
from test_auth_and_rate_limit import *  # noqa: F403
from test_export import *  # noqa: F403
from test_list_cursor import *  # noqa: F403
from test_runs_batch import *  # noqa: F403
from test_runs_create import (  # noqa: F401
    test_client_supplied_created_at_is_kept_canonically,
    test_concurrent_creates_of_one_event_id_give_one_created,
    test_counter_bounds_are_inclusive,
    test_create_answers_201_created_with_exact_body,
    test_created_run_defaults,
    test_duplicate_create_answers_201_duplicate_with_exact_body,
    test_duplicate_create_changes_nothing_stored,
    test_empty_json_objects_stay_objects,
    test_every_accepted_event_id_is_reachable,
    test_every_optional_field_round_trips,
    test_git_commit_fields_are_stored_on_post,
    test_identifiers_allow_dots_dashes_and_unicode,
    test_nothing_is_stored_after_a_422,
    test_null_counters_default_to_zero,
    test_timestamps_are_stored_canonically_in_utc,
)
from test_runs_query import *  # noqa: F403
from test_runs_update import *  # noqa: F403
from test_stale_runs import (  # noqa: F401
    test_a_bad_heartbeat_body_is_refused_and_changes_nothing,
    test_a_bad_heartbeat_timeout_is_refused_everywhere,
    test_a_bare_heartbeat_changes_nothing_but_last_seen_at,
    test_a_heartbeat_to_a_finished_run_changes_nothing,
    test_a_heartbeat_to_an_unknown_run_is_404,
    test_a_malformed_seen_at_is_an_item_error_and_applies_nothing,
    test_heartbeat_progress_is_an_rfc7396_merge_patch,
    test_heartbeat_timeout_bounds_and_clearing,
    test_progress_that_would_grow_metrics_past_the_body_limit_is_413,
    test_seen_at_from_the_past_is_the_agents_time_on_a_new_run,
    test_seen_at_in_the_future_is_clamped_to_the_server_clock,
    test_seen_at_never_moves_last_seen_at_backwards,
    test_stale_takes_only_true,
    test_upsert_heartbeat_and_metrics_patch_items,
)

# They open SQLite's file, or count the chunks of SQLite's Export class.
del test_a_client_that_leaves_releases_the_transaction_at_once  # noqa: F821
del test_head_answers_headers_without_reading_runs  # noqa: F821
