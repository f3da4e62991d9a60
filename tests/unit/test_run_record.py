"""A run known only from the fields it was sent with is answered as the server answers it."""

from __future__ import annotations

from server.contract.run_record import RUN_COLUMNS, RUN_COUNTER_COLUMNS, unstored_run, with_urls


def test_unstored_run_has_every_field_in_answer_order_with_stored_defaults() -> None:
    run = unstored_run({"event_id": "e-1", "run_id": "r", "agent_name": "a", "job_type": "j"})
    assert list(run) == [*RUN_COLUMNS, "commit_url", "repo_url"]
    assert run["status"] == "running"
    assert all(run[column] == 0 for column in RUN_COUNTER_COLUMNS)
    assert run["end_time"] is None
    assert run["metrics_json"] is None
    assert (run["event_id"], run["run_id"]) == ("e-1", "r")


def test_unstored_run_keeps_what_was_sent_over_the_defaults_and_drops_unknown_keys() -> None:
    sent = {
        "event_id": "e-2",
        "status": "failure",
        "items_failed": 3,
        "metrics_json": {"a": [1]},
        "commit_url": "https://evil.example/",  # derived, never taken from the client
        "not_a_field": "x",
        "__proto__": {"polluted": True},
    }
    run = unstored_run(sent)
    assert run["status"] == "failure"
    assert run["items_failed"] == 3
    assert run["metrics_json"] == {"a": [1]}
    assert "not_a_field" not in run
    assert "__proto__" not in run
    assert run["commit_url"] is None
    assert run["repo_url"] is None


def test_unstored_run_derives_urls_as_a_stored_run_gets_them() -> None:
    fields = {"git_repo": "git@github.com:owner/repo.git", "git_commit_hash": "ABCDEF1"}
    run = unstored_run(fields)
    stored = with_urls({"git_repo": fields["git_repo"], "git_commit_hash": "ABCDEF1"})
    assert run["repo_url"] == stored["repo_url"] == "https://github.com/owner/repo"
    assert run["commit_url"] == stored["commit_url"]
    assert run["commit_url"] is not None
    assert run["commit_url"].startswith(stored["repo_url"])
