"""associate-commit, the commit-url / repo-url endpoints and the URL fields on runs."""

from __future__ import annotations

import pytest


async def created(api, new_run, **overrides):
    run = new_run(**overrides)
    await api.create(run)
    return run


def associate_path(event_id):
    return f"/api/v1/runs/{event_id}/associate-commit"


async def test_associate_commit_answers_exact_body_and_stores(api, new_run):
    """associate-commit answers the guide's body and stores every git_commit_* field."""
    run = await created(api, new_run)
    reply = await api.post(
        associate_path(run["event_id"]),
        json={
            "commit_hash": "abc1234567890",
            "commit_source": "llm",
            "commit_author": "Claude Code <noreply@anthropic.com>",
            "commit_timestamp": "2026-01-12T16:05:00+05:30",
        },
    )
    assert reply.status == 200
    assert reply.body == {
        "status": "success",
        "event_id": run["event_id"],
        "run_id": run["run_id"],
        "commit_hash": "abc1234567890",
    }
    stored = await api.run(run["event_id"])
    assert stored["git_commit_hash"] == "abc1234567890"
    assert stored["git_commit_source"] == "llm"
    assert stored["git_commit_author"] == "Claude Code <noreply@anthropic.com>"
    assert stored["git_commit_timestamp"] == "2026-01-12T10:35:00.000000+00:00"


async def test_associate_commit_stores_hash_lowercase(api, new_run):
    """An upper-case hash is stored and answered in lower case."""
    run = await created(api, new_run)
    reply = await api.post(
        associate_path(run["event_id"]),
        json={"commit_hash": "ABCDEF0123456789ABCDEF0123456789ABCDEF01", "commit_source": "ci"},
    )
    assert reply.status == 200
    assert reply.body["commit_hash"] == "abcdef0123456789abcdef0123456789abcdef01"
    stored = await api.run(run["event_id"])
    assert stored["git_commit_hash"] == "abcdef0123456789abcdef0123456789abcdef01"


@pytest.mark.parametrize("source", ["manual", "llm", "ci"])
async def test_associate_commit_accepts_each_source(api, new_run, source):
    """commit_source may be manual, llm or ci."""
    run = await created(api, new_run)
    reply = await api.post(
        associate_path(run["event_id"]), json={"commit_hash": "a" * 7, "commit_source": source}
    )
    assert reply.status == 200
    assert (await api.run(run["event_id"]))["git_commit_source"] == source


@pytest.mark.parametrize("commit_hash", ["a" * 7, "0" * 40, "DeadBeef"])
async def test_associate_commit_hash_bounds(api, new_run, commit_hash):
    """Hashes of 7 and 40 hex characters, any case, are accepted."""
    run = await created(api, new_run)
    reply = await api.post(
        associate_path(run["event_id"]),
        json={"commit_hash": commit_hash, "commit_source": "manual"},
    )
    assert reply.status == 200


@pytest.mark.parametrize(
    "commit_hash", ["a" * 6, "a" * 41, "abc123\u2028g", "abc 1234", " abcdef1", "", None, 1234567]
)
async def test_associate_commit_bad_hash_is_422(api, new_run, commit_hash):
    """A hash that is not 7-40 characters, or holds whitespace or controls, is a 422."""
    run = await created(api, new_run)
    reply = await api.post(
        associate_path(run["event_id"]),
        json={"commit_hash": commit_hash, "commit_source": "manual"},
    )
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", "commit_hash"]


@pytest.mark.parametrize("source", ["human", "LLM", "", None, "bot"])
async def test_associate_commit_bad_source_is_422(api, new_run, source):
    """commit_source outside manual|llm|ci is a 422 naming commit_source."""
    run = await created(api, new_run)
    reply = await api.post(
        associate_path(run["event_id"]), json={"commit_hash": "abcdef1", "commit_source": source}
    )
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", "commit_source"]


@pytest.mark.parametrize("field", ["commit_hash", "commit_source"])
async def test_associate_commit_required_fields(api, new_run, field):
    """commit_hash and commit_source are both required."""
    run = await created(api, new_run)
    body = {"commit_hash": "abcdef1", "commit_source": "ci"}
    del body[field]
    reply = await api.post(associate_path(run["event_id"]), json=body)
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", field]


async def test_associate_commit_naive_timestamp_is_422(api, new_run):
    """commit_timestamp must carry a timezone."""
    run = await created(api, new_run)
    reply = await api.post(
        associate_path(run["event_id"]),
        json={
            "commit_hash": "abcdef1",
            "commit_source": "ci",
            "commit_timestamp": "2026-01-12 10:35:00",
        },
    )
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body", "commit_timestamp"]


async def test_associate_commit_unknown_run_is_404(api):
    """associate-commit for an unknown event_id is a 404."""
    reply = await api.post(
        associate_path("missing-run"), json={"commit_hash": "abcdef1", "commit_source": "ci"}
    )
    assert reply.status == 404
    assert reply.body["error"] == "not_found"


async def test_associate_commit_keeps_author_when_not_given(api, new_run):
    """A later association without author/timestamp does not erase the earlier ones."""
    run = await created(api, new_run)
    await api.post(
        associate_path(run["event_id"]),
        json={
            "commit_hash": "abcdef1",
            "commit_source": "llm",
            "commit_author": "A",
            "commit_timestamp": "2026-01-12T10:35:00Z",
        },
    )
    await api.post(
        associate_path(run["event_id"]), json={"commit_hash": "1234567", "commit_source": "ci"}
    )
    stored = await api.run(run["event_id"])
    assert stored["git_commit_hash"] == "1234567"
    assert stored["git_commit_source"] == "ci"
    assert stored["git_commit_author"] == "A"


async def test_associate_commit_unknown_field_is_422(api, new_run):
    """An unknown field in associate-commit is refused."""
    run = await created(api, new_run)
    reply = await api.post(
        associate_path(run["event_id"]),
        json={"commit_hash": "abcdef1", "commit_source": "ci", "commit_msg": "x"},
    )
    assert reply.status == 422


@pytest.mark.parametrize(
    ("git_repo", "repo_url", "commit_url"),
    [
        (
            "https://github.com/myorg/myrepo",
            "https://github.com/myorg/myrepo",
            "https://github.com/myorg/myrepo/commit/abcdef1",
        ),
        (
            "git@github.com:myorg/myrepo.git",
            "https://github.com/myorg/myrepo",
            "https://github.com/myorg/myrepo/commit/abcdef1",
        ),
        (
            "https://gitlab.com/group/sub/proj.git/",
            "https://gitlab.com/group/sub/proj",
            "https://gitlab.com/group/sub/proj/-/commit/abcdef1",
        ),
        (
            "ssh://git@bitbucket.org/team/repo.git",
            "https://bitbucket.org/team/repo",
            "https://bitbucket.org/team/repo/commits/abcdef1",
        ),
        (
            "https://git.example.com/team/repo",
            "https://git.example.com/team/repo",
            None,
        ),
        (
            "https://github.com.evil.example/o/r",
            "https://github.com.evil.example/o/r",
            None,
        ),
        (
            "https://user:s3cret@github.com/o/r",
            "https://github.com/o/r",
            "https://github.com/o/r/commit/abcdef1",
        ),
        ("not a url", None, None),
    ],
)
async def test_url_endpoints_and_fields(api, new_run, git_repo, repo_url, commit_url):
    """commit-url and repo-url answer, and every returned run carries, the same derived URLs."""
    run = await created(api, new_run, git_repo=git_repo, git_commit_hash="ABCDEF1")
    event_id = run["event_id"]

    reply = await api.get(f"/api/v1/runs/{event_id}/commit-url")
    assert reply.status == 200
    assert reply.body == {
        "event_id": event_id,
        "commit_url": commit_url,
        "git_repo": git_repo,
        "git_commit_hash": "abcdef1",
    }
    reply = await api.get(f"/api/v1/runs/{event_id}/repo-url")
    assert reply.status == 200
    assert reply.body == {"event_id": event_id, "repo_url": repo_url, "git_repo": git_repo}

    single = await api.run(event_id)
    [listed] = await api.list()
    for shown in (single, listed):
        assert shown["commit_url"] == commit_url
        assert shown["repo_url"] == repo_url
        assert "s3cret" not in str(shown["commit_url"]) + str(shown["repo_url"])


async def test_urls_null_without_git_metadata(api, new_run):
    """A run without git_repo has null commit_url and repo_url everywhere."""
    run = await created(api, new_run)
    stored = await api.run(run["event_id"])
    assert stored["commit_url"] is None
    assert stored["repo_url"] is None
    reply = await api.get(f"/api/v1/runs/{run['event_id']}/commit-url")
    assert reply.body["commit_url"] is None
    reply = await api.get(f"/api/v1/runs/{run['event_id']}/repo-url")
    assert reply.body["repo_url"] is None


async def test_commit_url_appears_after_association(api, new_run):
    """A GitHub run gets its commit_url once a commit is associated."""
    run = await created(api, new_run, git_repo="https://github.com/o/r")
    assert (await api.run(run["event_id"]))["commit_url"] is None
    await api.post(
        associate_path(run["event_id"]), json={"commit_hash": "abcdef1", "commit_source": "ci"}
    )
    assert (await api.run(run["event_id"]))["commit_url"] == "https://github.com/o/r/commit/abcdef1"


@pytest.mark.parametrize("suffix", ["commit-url", "repo-url"])
async def test_url_endpoints_unknown_run_is_404(api, suffix):
    """commit-url and repo-url for an unknown event_id are 404."""
    reply = await api.get(f"/api/v1/runs/nope/{suffix}")
    assert reply.status == 404
