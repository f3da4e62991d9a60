"""Names vulture reports as unused that are used where it cannot see (read by vulture only).

Each section says who uses them. A name that is truly dead is removed, not listed here.
"""

# ruff: noqa: B018, F821

# -- pydantic: fields read by model_validate / model_dump and the OpenAPI schema --------------
# server/contract/models.py: the run record's fields (RunCreate, RunUpdate, RunRecord, answers)
_.end_time
_.agent_owner
_.product
_.product_family
_.platform
_.subdomain
_.website
_.website_section
_.item_name
_.input_summary
_.output_summary
_.source_ref
_.target_ref
_.error_summary
_.error_details
_.git_branch
_.git_commit_hash
_.git_run_tag
_.git_commit_source
_.git_commit_author
_.git_commit_timestamp
_.environment
_.trigger_type
_.metrics_json
_.context_json
_.insight_id
_.parent_run_id
_.heartbeat_timeout_s
_.start_time
_.items_discovered
_.items_succeeded
_.items_failed
_.items_skipped
_.duration_ms
_.updated_at
_.last_seen_at
_.fields_updated
# server/contract/stats.py: the stats answer's fields
_.success_rate
# server/config.py: a setting accepted for compatibility and ignored (a test pins it)
_.metadata_ttl_s

# -- the standard library and persist-queue call these ---------------------------------------
_.disabled  # server/runtime/logs.py: logging.Logger.disabled, set to silence aiohttp's access log
_.tran_lock  # spoold/spool/queue.py: persist-queue's transaction lock, replaced by ours
_.sort_keys  # spoold/spool/codec.py: persist-queue calls serializer.dumps(value, sort_keys=...)
_._new_db_connection  # spoold/spool/store.py: persist-queue's connection factory, replaced by ours
_.multithreading  # its argument: always True for the spool (our connections cross threads)
_.exc_info  # __exit__(*exc_info) of the spool and the dead-letter store
_.exc_type  # spoold/spool/writegate.py: __exit__(exc_type, exc, traceback)
_.traceback

# -- documentation kept beside the code -------------------------------------------------------
_.help  # server/runtime/settings.py: Setting.help, the one-line meaning of each setting

# -- read by tests and benches only: observability and test seams ----------------------------
_.ECHOED  # server/contract/models.py: RunUpdate's echoed fields (tests/unit/test_contract_compat.py)
_.GROUP_KEYS  # server/contract/stats.py (tests/server/test_stats_rollups.py)
_.rejected_error  # spoold/accept/acceptor.py: AcceptStats (tests/spoold/test_accept_debt.py)
_.slow_commits  # AcceptStats (tests/spoold/test_accept_slow_commits.py, bench/spoold_accept.py)
_.wal_copies  # AcceptStats (tests/spoold/test_accept_checkpoints.py)
_.wal_copy_max_s  # AcceptStats (tests/spoold/test_accept_checkpoints.py)
_.answered  # spoold/forward/presence.py: BeaconStats (tests/sidecar/test_sidecar_heartbeat.py)
_.synchronous_modes  # spoold/spool/queue.py (tests/spoold/test_spool_durability.py)
_.inflight_groups  # spoold/spool/stats.py: SpoolStats (tests/spoold/test_spool_nack_retry.py)
_.adds_up  # spoold/state/ledger.py: Counts (the recovery and durability tests)
_.empty  # spoold/forward/handoff.py: Slot (the drain stage tests check a slot is free)

# -- server/storage/: read by tests only, or read through asdict() ---------------------------
_.frames_copied  # server/storage/checkpoint.py (tests/server/test_wal_checkpoints.py)
_.writer_catch_ups  # server/storage/checkpoint.py (tests/server/test_wal_checkpoints.py)
_.flushes  # server/storage/checkpoint.py (tests/server/test_checkpoint_flush.py)
_.max_batch_cpu_s  # server/storage/retention.py: PruneReport, answered via asdict()
_.AFTER_REBUILD  # server/storage/rollups.py (tests/server/test_stats_rollups.py)
_.percentile  # server/storage/stats.py (tests, bench/loadgen.py, bench/stats_bench.py)
_.new_loop  # server/runtime/event_loop.py (bench/server_ceiling.py, bench/spoold_accept.py)

# -- Jinja templates: page data read only by server/ui/templates and spoold/ui/templates ------
_.same_run_id  # server/ui/templates/run.html
_.newer_than  # spoold/ui/templates/status.html, and the rest of this section
_.last_success_ago
_.last_error_ago
_.fill
_.disk_free
_.disk_floor
_.uptime
_.generated_at
_.oldest_at
_.accepted_per_s
_.forwarded_per_s
_.dead_lettered_per_s

# -- PostgreSQL backend (issue 13): used by tests until it is wired into the app -------------
_._both_conform  # server/postgres/store.py: never called, mypy checks both backends against RunStore
_.active  # server/postgres/ratelimit.py Grant: replicas sharing a client (tests/postgres/test_pg_rate_limit_store.py)

# -- checkpoint flushes: read by tests (tests/server/test_checkpoint_flush.py) ------------------
_.holds_file  # server/storage/checkpoint.py: whether the flush descriptor is still open
