"""The run endpoints' handler tests of tests/server, run again with the endpoints on
PostgreSQL (``make_api`` in this directory's conftest): same statuses, same bodies.

Whole modules where nearly every test reaches the database; from test_runs_create, the
tests that store something (its other ~200 cases are validation, answered before any
storage is touched, so they would only repeat the SQLite run)."""

from __future__ import annotations

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
