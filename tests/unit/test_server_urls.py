"""server.contract.urls: one repo_url for every spelling of a repository, commit URLs per host."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from server.contract.urls import build_commit_url, build_repo_url, parse_repo

PUBLIC_HOSTS = {
    "github.com": "/commit/",
    "gitlab.com": "/-/commit/",
    "bitbucket.org": "/commits/",
}

SEGMENT = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda name: not name.lower().endswith(".git") and name not in (".", "..")
)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
SELF_HOSTED = (
    st.lists(LABEL, min_size=2, max_size=4)
    .map(".".join)
    .filter(lambda host: host not in PUBLIC_HOSTS)
)
HASHES = st.from_regex(r"[0-9a-fA-F]{7,40}", fullmatch=True)
# Secrets carry a marker no host, hash or generated path can contain by chance.
SECRET = st.from_regex(r"[A-Za-z0-9]{6,12}", fullmatch=True).map(lambda s: f"S3CRETx{s}")


def spellings(host: str, path: str) -> list[str]:
    """Every form a client may store in git_repo for one repository."""
    return [
        f"https://{host}/{path}",
        f"https://{host}/{path}/",
        f"https://{host}/{path}.git",
        f"https://{host}/{path}.git/",
        f"http://{host}/{path}",
        f"https://{host.upper()}/{path}",
        f"https://{host}:443/{path}",
        f"ssh://git@{host}/{path}.git",
        f"ssh://git@{host}:22/{path}.git",
        f"git://{host}/{path}.git",
        f"git@{host}:{path}.git",
        f"git@{host}:{path}",
        f"{host}:{path}.git",
        f"  https://{host}/{path}  ",
    ]


@st.composite
def repositories(draw):
    host = draw(st.one_of(st.sampled_from(sorted(PUBLIC_HOSTS)), SELF_HOSTED))
    if host in ("github.com", "bitbucket.org"):
        segments = draw(st.lists(SEGMENT, min_size=2, max_size=2))
    else:
        segments = draw(st.lists(SEGMENT, min_size=2, max_size=4))
    return host, "/".join(segments)


@settings(max_examples=120, deadline=None)
@given(repositories())
def test_every_spelling_gives_the_same_repo_url(repo):
    """https, http, ssh://, git@host:o/r.git, .git and trailing-slash forms give one URL."""
    host, path = repo
    expected = f"https://{host}/{path}"
    for text in spellings(host, path):
        assert build_repo_url(text) == expected, text


@settings(max_examples=120, deadline=None)
@given(repositories(), HASHES)
def test_commit_urls_follow_each_host_route(repo, commit_hash):
    """GitHub /commit/, GitLab /-/commit/, Bitbucket /commits/; others have none."""
    host, path = repo
    route = PUBLIC_HOSTS.get(host)
    expected = None if route is None else f"https://{host}/{path}{route}{commit_hash.lower()}"
    for text in spellings(host, path):
        assert build_commit_url(text, commit_hash) == expected, text


LOOKALIKES = st.one_of(
    st.builds(
        lambda real, suffix: f"{real}.{suffix}",
        st.sampled_from(sorted(PUBLIC_HOSTS)),
        SELF_HOSTED,
    ),
    st.builds(lambda prefix, real: f"{prefix}{real}", LABEL, st.sampled_from(sorted(PUBLIC_HOSTS))),
    st.builds(
        lambda prefix, real: f"{prefix}.{real}", LABEL, st.sampled_from(sorted(PUBLIC_HOSTS))
    ),
    st.sampled_from(["github.co", "gitlab.org", "bitbucket.com", "github.com.", "githib.com"]),
)


@settings(max_examples=120, deadline=None)
@given(LOOKALIKES, SEGMENT, SEGMENT, HASHES)
def test_lookalike_hosts_never_get_a_commit_url(host, owner, name, commit_hash):
    """Hosts are matched exactly: github.com.evil.example and friends are not GitHub."""
    assume(host not in PUBLIC_HOSTS)
    for text in spellings(host, f"{owner}/{name}"):
        assert build_commit_url(text, commit_hash) is None, text


@pytest.mark.parametrize(
    "text",
    [
        "https://github.com@evil.example/o/r",
        "https://github.com:x@evil.example/o/r",
        "https://evil.example/github.com/o",
        "https://evil.example/?u=https://github.com/o/r",
        "https://evil.example#https://github.com/o/r",
        "git@evil.example:github.com/o",
    ],
)
def test_github_in_credentials_path_or_query_is_not_github(text):
    """Only the real host counts; github.com elsewhere in the URL never gives a commit URL."""
    assert build_commit_url(text, "abcdef1") is None
    url = build_repo_url(text)
    assert url is None or not url.startswith("https://github.com/")


@settings(max_examples=120, deadline=None)
@given(repositories(), SECRET, SECRET, HASHES)
def test_credentials_never_appear_in_output(repo, user, password, commit_hash):
    """User names, passwords and tokens in git_repo never reach repo_url or commit_url."""
    host, path = repo
    assume(user not in f"{host}/{path}" and password not in f"{host}/{path}")
    forms = [
        f"https://{user}:{password}@{host}/{path}.git",
        f"https://{password}@{host}/{path}",
        f"https://x-access-token:{password}@{host}/{path}",
        f"ssh://{user}:{password}@{host}/{path}.git",
        f"http://{user}@{host}/{path}/",
    ]
    for text in forms:
        repo_url = build_repo_url(text)
        commit_url = build_commit_url(text, commit_hash)
        assert repo_url == f"https://{host}/{path}", text
        for output in (repo_url, commit_url):
            assert user not in str(output)
            assert password not in str(output)
            assert "@" not in str(output)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120), st.one_of(st.none(), st.text(max_size=50), HASHES))
def test_any_text_gives_none_or_a_clean_https_url(text, commit_hash):
    """Builders never raise; what they return is None or an https URL without credentials."""
    for output in (build_repo_url(text), build_commit_url(text, commit_hash)):
        if output is not None:
            assert output.startswith("https://")
            assert "@" not in output
            assert not any(ch.isspace() for ch in output)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "myrepo",
        "https://github.com",
        "https://github.com/",
        "https://github.com/onlyowner",
        "https://github.com/o/r/tree/main",
        "https://github.com/o/r/../x",
        "ftp://github.com/o/r",
        "file:///home/me/repo",
        "javascript:alert(1)",
        "https://localhost/o/r",
        "https://github.com:notaport/o/r",
        "https://git hub.com/o/r",
        "/srv/git/repo.git",
        "C:\\repos\\r",
    ],
)
def test_unusable_repositories_give_no_urls(text):
    """Values that are not a web repository give null repo_url and commit_url."""
    assert build_repo_url(text) is None
    assert build_commit_url(text, "abcdef1") is None


@pytest.mark.parametrize(
    "commit_hash", [None, "", "abc 1234", "abc\n1234", "abc\x00def", "a" * 256, ".", ".."]
)
def test_bad_hash_gives_no_commit_url(commit_hash):
    """A missing hash, or one the contract refuses (whitespace, controls, over 255), or a
    dot-segment gives no commit URL, but the repo URL remains. Any other revision (any VCS)
    gets one: see tests/unit/test_contract_compat.py."""
    assert build_commit_url("https://github.com/o/r", commit_hash) is None
    assert build_repo_url("https://github.com/o/r") == "https://github.com/o/r"


def test_gitlab_subgroups_and_self_hosted():
    """GitLab keeps nested groups; self-hosted hosts get a repo URL but no commit URL."""
    assert (
        build_commit_url("git@gitlab.com:g/sub/deeper/p.git", "ABCDEF1")
        == "https://gitlab.com/g/sub/deeper/p/-/commit/abcdef1"
    )
    assert build_repo_url("git@git.corp.example:team/r.git") == "https://git.corp.example/team/r"
    assert build_commit_url("git@git.corp.example:team/r.git", "abcdef1") is None


def test_parse_repo_exposes_host_and_path():
    """parse_repo returns the lower-cased host and the owner/name path."""
    repo = parse_repo("git@GitHub.com:MyOrg/MyRepo.git")
    assert repo is not None
    assert (repo.host, repo.path) == ("github.com", "MyOrg/MyRepo")
