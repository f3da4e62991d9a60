"""Building web URLs for a run's repository and commit from whatever git_repo holds.

Accepts https/http URLs, ``git@host:owner/repo.git`` and ``ssh://`` forms;
drops credentials, ``.git`` and trailing slashes. Hosts are matched exactly, so
``github.com.evil.example`` is not GitHub. Commit links are built only for the
three public platforms; a self-hosted repository gets its repo URL but no
commit URL (we cannot know its route layout).

A commit hash may be any revision string (runs come from any VCS), so it is
percent-encoded as ONE path segment: whatever it holds (``/``, ``?``, ``#``,
``%``, ``..``) it cannot add a path, a query or a fragment to the link.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

_COMMIT_PATHS = {
    "github.com": "/commit/",
    "gitlab.com": "/-/commit/",
    "bitbucket.org": "/commits/",
}
_TWO_SEGMENT_HOSTS = frozenset({"github.com", "bitbucket.org"})
_SCP_LIKE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*)$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]+$")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_HEX = re.compile(r"[0-9a-fA-F]+")
_NOT_A_REVISION = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")  # as the contract refuses
_DOT_SEGMENTS = frozenset({".", ".."})  # resolved by browsers even when percent-encoded


@dataclass(frozen=True)
class Repo:
    host: str
    path: str

    @property
    def url(self) -> str:
        return f"https://{self.host}/{self.path}"


@functools.lru_cache(maxsize=4096)  # a list answer parses the same few repositories again and again
def parse_repo(git_repo: str | None) -> Repo | None:
    """The host and owner/name path of a repository reference, or None if unusable."""
    if not git_repo:
        return None
    text = git_repo.strip()
    if not text or any(ch.isspace() for ch in text):
        return None
    if "://" in text:
        try:
            parts = urlsplit(text)
            host = (parts.hostname or "").lower()
            _ = parts.port  # raises ValueError on a malformed port
        except ValueError:
            return None
        if parts.scheme.lower() not in ("http", "https", "ssh", "git"):
            return None
        path = parts.path
    else:
        match = _SCP_LIKE.match(text)
        if match is None:
            return None
        host, path = match["host"].lower(), match["path"]
    path = path.strip("/")
    path = path.removesuffix(".git").strip("/")
    segments = path.split("/")
    if not _HOST.match(host) or "." not in host or len(segments) < 2:
        return None
    if not all(_SEGMENT.match(segment) and segment not in (".", "..") for segment in segments):
        return None
    if host in _TWO_SEGMENT_HOSTS and len(segments) != 2:
        return None  # owner/repo only; deeper paths are pages inside a repository
    return Repo(host, "/".join(segments))


def build_repo_url(git_repo: str | None) -> str | None:
    """``https://host/owner/repo`` for any parseable repository reference."""
    repo = parse_repo(git_repo)
    return None if repo is None else repo.url


def build_commit_url(git_repo: str | None, commit_hash: str | None) -> str | None:
    """The commit page on GitHub, GitLab or Bitbucket; None for other hosts."""
    repo = parse_repo(git_repo)
    if repo is None or not commit_hash or commit_hash in _DOT_SEGMENTS:
        return None
    if len(commit_hash) > 255 or _NOT_A_REVISION.search(commit_hash):
        return None
    route = _COMMIT_PATHS.get(repo.host)
    if route is None:
        return None
    revision = commit_hash.lower() if _HEX.fullmatch(commit_hash) else commit_hash
    return f"{repo.url}{route}{quote(revision, safe='')}"
