"""The contract's liberal side (issue 8, compatibility): what existing clients send is accepted.

Strict where a value decides identity or time; liberal with descriptive fields:
names are ordinary Unicode text, commit hashes come from any VCS, JSON objects may
arrive as JSON text, and server-maintained fields echoed back on PATCH are ignored.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pytest
from pydantic import ValidationError

from server.contract.fields import JSON_DEPTH_BUDGET, identifier_problem
from server.contract.models import CommitAssociation, RunCreate, RunUpdate, UpsertItem
from server.contract.urls import build_commit_url

BASE: dict[str, Any] = {
    "event_id": "e-1",
    "run_id": "r-1",
    "agent_name": "agent",
    "job_type": "job",
    "start_time": "2026-01-12T10:30:00Z",
}

#: Ordinary text people and tools put in names; each must round-trip unchanged.
ORDINARY_NAMES = [
    "\U0001f469\u200d\U0001f4bb",  # woman technologist: an emoji ZWJ sequence
    "agent\u00a0one",  # no-break space
    "e\u0301te\u0301",  # combining acute accents (not NFC-composed)
    "\u05e1\u05d5\u05db\u05df-agent",  # Hebrew, right to left
    "\u202bembedded\u202c",  # bidi embedding controls (format characters, not C0/C1)
    "\U0001f44d\U0001f3fd",  # emoji with a skin-tone modifier
    "\u00adsoft-hyphen",
    "zero\u200bwidth",
    " padded ",  # surrounding spaces are kept as sent
    "x" * 255,
]

#: What a name may never be or contain.
BAD_NAMES = [
    "",
    " ",
    "\u00a0\u3000",  # only whitespace
    "\u200b\u200d",  # only invisible format characters: nothing to show
    "a/b",
    "tab\there",
    "nul\x00",
    "esc\x1b[31m",
    "del\x7f",
    "c1\x85",
    "c1\x9f",
    "line\u2028sep",
    "para\u2029sep",
    "x" * 256,
]


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORDINARY_NAMES)
@pytest.mark.parametrize("field", ["event_id", "run_id", "agent_name", "job_type"])
def test_ordinary_text_is_a_valid_name(field: str, name: str) -> None:
    """Emoji sequences, no-break spaces, combining marks and bidi text are names, kept exactly."""
    run = RunCreate.model_validate({**BASE, field: name})
    assert getattr(run, field) == name
    assert identifier_problem(name) is None


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("field", ["event_id", "run_id", "agent_name", "job_type"])
def test_only_blank_slash_controls_separators_and_overlong_names_are_refused(
    field: str, name: str
) -> None:
    """The refusal names the field."""
    with pytest.raises(ValidationError) as caught:
        RunCreate.model_validate({**BASE, field: name})
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]
    assert identifier_problem(name) is not None


# ---- commit hashes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("abc123456789manual", "abc123456789manual"),  # the reference's own test value
        ("789xyz123", "789xyz123"),
        ("DEF4567", "def4567"),  # hex: lower case
        ("ABCDEF0123456789ABCDEF0123456789ABCDEF01", "abcdef0123456789abcdef0123456789abcdef01"),
        ("r1234567", "r1234567"),  # a Subversion-like revision
        ("Mixed-Case.Rev", "Mixed-Case.Rev"),  # not hex: as sent
    ],
)
def test_associate_commit_hash_is_any_7_to_40_visible_characters(sent: str, stored: str) -> None:
    assert CommitAssociation(commit_hash=sent, commit_source="manual").commit_hash == stored


@pytest.mark.parametrize(
    "value",
    ["abc123", "a" * 41, "abc 1234", " abcdef1", "abcdef1\n", "abc\x00def1", "abc\u2028def1",
     "abc\u00a0def1", "abc\x85def1", "", None, 1234567],
)  # fmt: skip
def test_associate_commit_hash_refuses_short_long_blank_and_control(value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        CommitAssociation.model_validate({"commit_hash": value, "commit_source": "ci"})
    assert [error["loc"] for error in caught.value.errors()] == [("commit_hash",)]


@pytest.mark.parametrize(
    ("sent", "stored"),
    [("abc123", "abc123"), ("ABC123", "abc123"), ("any", "any"), ("testcommit789", "testcommit789"),
     ("x" * 255, "x" * 255), ("v1.2.3+build/7", "v1.2.3+build/7")],
)  # fmt: skip
def test_git_commit_hash_on_runs_is_any_visible_string_up_to_255(sent: str, stored: str) -> None:
    """POST and PATCH take any VCS revision (the reference's tests send 'any', 'abc123')."""
    assert RunCreate.model_validate({**BASE, "git_commit_hash": sent}).git_commit_hash == stored
    assert RunUpdate.model_validate({"git_commit_hash": sent}).changes() == {
        "git_commit_hash": stored
    }


@pytest.mark.parametrize("value", ["", "x" * 256, "abc 123", "abc\t123", "abc\x7f", 1234567])
def test_git_commit_hash_refuses_empty_overlong_whitespace_and_control(value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        RunCreate.model_validate({**BASE, "git_commit_hash": value})
    assert [error["loc"] for error in caught.value.errors()] == [("git_commit_hash",)]


# ---- commit URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "commit", "url"),
    [
        ("https://bitbucket.org/owner/repo", "789xyz123", "https://bitbucket.org/owner/repo/commits/789xyz123"),
        ("https://github.com/test/repo", "testcommit789", "https://github.com/test/repo/commit/testcommit789"),
        ("https://gitlab.com/o/r", "ABCDEF1", "https://gitlab.com/o/r/-/commit/abcdef1"),
        ("https://github.com/o/r", "any", "https://github.com/o/r/commit/any"),
    ],
)  # fmt: skip
def test_commit_urls_are_built_for_any_hash(repo: str, commit: str, url: str) -> None:
    assert build_commit_url(repo, commit) == url


@pytest.mark.parametrize(
    "hostile",
    ["x/../../../evil", "abc?next=https://evil.example", "abc#frag", "abc%2F..%2Fevil",
     "a\\b", "..", ".", "abc&x=1;y", "<script>", "\u202eabc"],
)  # fmt: skip
def test_a_hostile_hash_cannot_leave_its_path_segment(hostile: str) -> None:
    """Whatever the hash holds, the URL stays on the repository's commit route: one segment,
    no query, no fragment, no dot-segments."""
    url = build_commit_url("https://github.com/owner/repo", hostile)
    if url is None:
        assert hostile in (".", "..")
        return
    prefix = "https://github.com/owner/repo/commit/"
    assert url.startswith(prefix)
    segment = url[len(prefix) :]
    for char in "/?#\\<":
        assert char not in segment
    assert segment not in (".", "..")
    assert unquote(segment) == hostile


# ---- JSON objects given as JSON text -----------------------------------------------------------


@pytest.mark.parametrize("field", ["metrics_json", "context_json"])
def test_json_text_holding_an_object_is_decoded(field: str) -> None:
    """The reference client's RunRecord holds metrics_json as a str: '{"a": 1}'."""
    text = json.dumps({"a": 1, "nested": {"list": [1, 2, {"k": None}]}, "u": "\u00e9\U0001f600"})
    run = RunCreate.model_validate({**BASE, field: text})
    assert getattr(run, field) == json.loads(text)
    assert RunUpdate.model_validate({field: text}).changes() == {field: json.loads(text)}
    assert RunUpdate.model_validate({field: "{}"}).changes() == {field: {}}


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "[]", "1", "null", '"{}"', "", "{", "NaN",
                                  "true", '{"a": 1} trailing'])  # fmt: skip
@pytest.mark.parametrize("field", ["metrics_json", "context_json"])
def test_any_other_text_is_refused_naming_the_field(field: str, text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RunCreate.model_validate({**BASE, field: text})
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]
    with pytest.raises(ValidationError) as caught:
        RunUpdate.model_validate({field: text})
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


def _nested_text(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


@pytest.mark.parametrize("levels", [32, 1000, 10_000, 100_000])
def test_json_text_nested_too_deep_is_refused(levels: int) -> None:
    """An adversary nests thousands of levels inside the string: refused, no recursion."""
    with pytest.raises(ValidationError) as caught:
        RunCreate.model_validate({**BASE, "metrics_json": _nested_text(levels)})
    assert [error["loc"] for error in caught.value.errors()] == [("metrics_json",)]


def test_json_text_depth_budget_comes_from_the_context() -> None:
    """The caller says how many levels the field may hold (the body's limit minus its place)."""
    context = {JSON_DEPTH_BUDGET: 4}
    ok = RunCreate.model_validate({**BASE, "metrics_json": _nested_text(4)}, context=context)
    assert ok.metrics_json is not None
    with pytest.raises(ValidationError):
        RunCreate.model_validate({**BASE, "metrics_json": _nested_text(5)}, context=context)


# ---- PATCH: echoed server fields ---------------------------------------------------------------

REFERENCE_END_RUN = {
    "status": "success",
    "end_time": "2026-01-12T10:35:00.123456+00:00",
    "duration_ms": 300123,
    "items_discovered": 10,
    "items_succeeded": 9,
    "items_failed": 1,
    "output_summary": "done",
    "metrics_json": '{"tokens": 5}',
    "updated_at": "2026-01-12T10:35:00.123457+00:00",
}


def test_reference_end_run_body_validates_and_drops_updated_at() -> None:
    update = RunUpdate.model_validate(REFERENCE_END_RUN)
    changes = update.changes()
    assert "updated_at" not in changes
    assert changes["metrics_json"] == {"tokens": 5}
    assert set(changes) == set(REFERENCE_END_RUN) - {"updated_at"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("updated_at", "2026-01-12T10:35:00+00:00"), ("created_at", "2026-01-12T10:30:00Z"),
     ("id", 17), ("commit_url", "https://github.com/o/r/commit/abc"), ("commit_url", None),
     ("repo_url", "https://github.com/o/r"), ("repo_url", None), ("event_id", "e-1")],
)  # fmt: skip
def test_echoed_server_fields_are_accepted_and_never_changes(field: str, value: Any) -> None:
    update = RunUpdate.model_validate({"status": "success", field: value})
    assert update.changes() == {"status": "success"}


@pytest.mark.parametrize("field", ["stauts", "update_at", "api_posted", "record_type", "ID"])
def test_unknown_fields_are_still_refused_on_patch(field: str) -> None:
    """Typo protection stays: only the listed server-maintained names are tolerated."""
    with pytest.raises(ValidationError) as caught:
        RunUpdate.model_validate({"status": "success", field: "x"})
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


def test_an_upsert_update_cannot_rename_its_run_either() -> None:
    """The batch upsert applies the same rule as PATCH: an echoed event_id must match."""
    same = UpsertItem.model_validate({"event_id": "e-1", "update": {"event_id": "e-1", "id": 3,
                                                                    "status": "success"}})  # fmt: skip
    assert same.update is not None
    assert same.update.changes() == {"status": "success"}
    with pytest.raises(ValidationError, match="a run is never renamed"):
        UpsertItem.model_validate({"event_id": "e-1", "update": {"event_id": "e-2"}})


def test_openapi_documents_the_liberal_fields() -> None:
    """The document says what the models now accept, so fuzzers and client generators agree."""
    from server.http.openapi import build_openapi

    schemas = build_openapi(title="t", version="1", description="d")["components"]["schemas"]
    associate = schemas["CommitAssociation"]["properties"]["commit_hash"]
    assert (associate["minLength"], associate["maxLength"]) == (7, 40)
    assert "0-9a-f" not in associate["pattern"]
    for model in ("RunCreate", "RunUpdate"):
        run_hash = schemas[model]["properties"]["git_commit_hash"]["anyOf"][0]
        assert (run_hash["minLength"], run_hash["maxLength"]) == (1, 255)
        metrics = schemas[model]["properties"]["metrics_json"]["anyOf"]
        assert {"type": "string"} in metrics
        assert (
            "/" in schemas[model]["properties"]["agent_name"].get("pattern", "")
            or "/" in (schemas[model]["properties"]["agent_name"]["anyOf"][0]["pattern"])
        )
    update = schemas["RunUpdate"]
    assert update["additionalProperties"] is False
    for echoed in ("updated_at", "created_at", "id", "commit_url", "repo_url", "event_id"):
        assert "ignored" in update["properties"][echoed]["description"]
    # responses stay objects: JSON text is only an input form
    record = schemas["RunRecord"]["properties"]["metrics_json"]["anyOf"]
    assert {"type": "string"} not in record


def test_the_echoed_field_list_is_the_models_ignored_fields() -> None:
    """RunUpdate.ECHOED (documented) is exactly the set of accepted-but-excluded fields."""
    excluded = {name for name, info in RunUpdate.model_fields.items() if info.exclude}
    assert excluded == {*RunUpdate.ECHOED, "event_id"}
