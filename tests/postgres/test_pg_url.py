"""The database URL: which setting wins, what is refused, and the password never shown."""

from __future__ import annotations

import pytest

from server.postgres.url import InvalidDatabaseUrl, host_list, parse_url, url_from_environment

SECRET = "s3cr%40t-pässword"


def test_telemetry_database_url_wins_then_database_url_then_sqlite() -> None:
    ours = "postgresql://u:p@db1:5432/telemetry"
    theirs = "postgres://u:p@db2/telemetry"
    assert (
        url_from_environment({"TELEMETRY_DATABASE_URL": ours, "DATABASE_URL": theirs}).dsn == ours
    )  # type: ignore[union-attr]
    assert url_from_environment({"DATABASE_URL": theirs}).dsn == theirs  # type: ignore[union-attr]
    assert (
        url_from_environment({"TELEMETRY_DATABASE_URL": "  ", "DATABASE_URL": theirs}).dsn == theirs
    )  # type: ignore[union-attr]
    assert url_from_environment({}) is None
    assert url_from_environment({"TELEMETRY_DB_PATH": "/var/lib/x.sqlite"}) is None


@pytest.mark.parametrize("other", ["sqlite:///var/lib/app.db", "mysql://u:p@h/db", "redis://h"])
def test_a_database_url_meant_for_other_software_keeps_sqlite(other: str) -> None:
    """DATABASE_URL is a common name: only a postgresql:// one is taken as ours."""
    assert url_from_environment({"DATABASE_URL": other}) is None
    with pytest.raises(InvalidDatabaseUrl, match=r"TELEMETRY_DATABASE_URL.*scheme"):
        url_from_environment({"TELEMETRY_DATABASE_URL": other})


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("mysql://u:SECRET@h/db", "scheme"),
        ("sqlite:///var/lib/t.sqlite", "scheme"),
        ("postgresql://u:SECRET@/db", "no host"),
        ("postgresql://u:SECRET@h", "no database"),
        ("postgresql://u:SECRET@h/", "no database"),
        ("postgresql://u:SECRET@h:99999/db", "port"),
        ("postgresql://u:SECRET@h:x/db", "port"),
        ("postgresql://u:SECRET@h:0/db", "port"),
        ("postgresql://u:SECRET@h/db#frag", "fragment"),
        ("postgresql://u:SECRET@[::1/db", "malformed"),
    ],
)
def test_bad_urls_are_refused_without_the_password(url: str, word: str) -> None:
    with pytest.raises(InvalidDatabaseUrl, match=word) as caught:
        parse_url(url.replace("SECRET", SECRET))
    assert SECRET not in str(caught.value)
    assert "s3cr" not in str(caught.value)
    for name in ("TELEMETRY_DATABASE_URL", "DATABASE_URL"):
        if name == "DATABASE_URL" and not url.startswith("postgres"):
            continue  # not meant for this server: left alone (test above)
        with pytest.raises(InvalidDatabaseUrl, match=name) as named:
            url_from_environment({name: url.replace("SECRET", SECRET)})
        assert "s3cr" not in str(named.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://telemetry:{SECRET}@db.example:5433/runs",
            "postgresql://telemetry:***@db.example:5433/runs",
        ),
        (f"postgres://:{SECRET}@db/runs", "postgres://:***@db/runs"),
        ("postgresql://telemetry@db/runs", "postgresql://telemetry@db/runs"),
        (
            f"postgresql://db/runs?password={SECRET}&sslmode=require",
            "postgresql://db/runs?password=***&sslmode=require",
        ),
        ("postgresql:///runs?host=/run/postgresql", "postgresql:///runs?host=/run/postgresql"),
    ],
)
def test_the_shown_form_hides_the_password(url: str, shown: str) -> None:
    parsed = parse_url(url)
    assert parsed.dsn == url
    assert parsed.redacted == shown
    assert "s3cr" not in repr(parsed)
    assert "s3cr" not in parsed.redacted


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        (
            "postgresql://u:SECRET@10.0.0.1:5432,10.0.0.2:5433/runs"
            "?target_session_attrs=read-write",
            [("10.0.0.1", 5432), ("10.0.0.2", 5433)],
        ),
        ("postgresql://u:SECRET@db1,db2:5433/runs", [("db1", None), ("db2", 5433)]),
        ("postgresql://u:SECRET@db1:5432,db2/runs", [("db1", 5432), ("db2", None)]),
        (
            "postgres://u:SECRET@[::1]:5432,[fe80::2],db3:1/runs",
            [("::1", 5432), ("fe80::2", None), ("db3", 1)],
        ),
        ("postgresql://u:SECRET@db:5432/runs", [("db", 5432)]),
    ],
)
def test_several_hosts_are_accepted_as_libpq_writes_them(
    url: str, hosts: list[tuple[str, int | None]]
) -> None:
    """What operators write for a primary and its standbys: the driver tries them in
    order (``target_session_attrs`` picks the writable one after a promotion)."""
    parsed = parse_url(url.replace("SECRET", SECRET))
    assert parsed.dsn == url.replace("SECRET", SECRET)
    assert parsed.redacted == url.replace("SECRET", "***")
    assert "s3cr" not in repr(parsed)
    assert host_list(parsed.dsn.split("//", 1)[1].split("/", 1)[0]) == hosts


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("postgresql://u:SECRET@db1:5432,db2:99999/runs", "port"),
        ("postgresql://u:SECRET@db1:5432,db2:x/runs", "port"),
        ("postgresql://u:SECRET@db1:5432,db2:0/runs", "port"),
        ("postgresql://u:SECRET@db1:5432,db2:+5/runs", "port"),
        ("postgresql://u:SECRET@db1:5432,db2:\uff15\uff14/runs", "port"),
        ("postgresql://u:SECRET@db1:5432,,db2/runs", "empty host"),
        ("postgresql://u:SECRET@db1:5432,/runs", "empty host"),
        ("postgresql://u:SECRET@,db1/runs", "empty host"),
        ("postgresql://u:SECRET@db1:1:2/runs", "port"),
        ("postgresql://u:SECRET@[::1]x,db2/runs", "malformed"),
        ("postgresql://u:SECRET@db1,db2/runs?target_session_attrs=writable", "target_session"),
        ("postgresql://u:SECRET@db1,db2/runs?target_session_attrs=", "target_session"),
    ],
)
def test_bad_host_lists_are_refused_without_the_password(url: str, word: str) -> None:
    with pytest.raises(InvalidDatabaseUrl, match=word) as caught:
        parse_url(url.replace("SECRET", SECRET))
    assert "s3cr" not in str(caught.value)
    with pytest.raises(InvalidDatabaseUrl, match="TELEMETRY_DATABASE_URL") as named:
        url_from_environment({"TELEMETRY_DATABASE_URL": url.replace("SECRET", SECRET)})
    assert "s3cr" not in str(named.value)


@pytest.mark.parametrize(
    "url",
    [
        # A generated password holding a character URLs reserve, not percent-encoded:
        # urlsplit ends the network location at it, so it sees no password at all.
        "postgresql://u:ab#SECRET@h/db",
        "postgresql://u:ab/SECRET@h/db",
        "postgresql://u:ab?SECRET@h/db",
        "postgresql://u:1234/SECRET@h/db",  # parses: host u, port 1234, database SECRET@h/db
        "postgresql://u:ab/SECRET@h/db?password=SECRET",
    ],
)
def test_a_password_with_unescaped_reserved_characters_is_never_shown(url: str) -> None:
    try:
        shown = parse_url(url.replace("SECRET", SECRET)).redacted
    except InvalidDatabaseUrl as exc:
        shown = str(exc)
    assert "s3cr" not in shown, shown


@pytest.mark.parametrize(
    "url", ["postgresql+asyncpg://u:SECRET@h/db", "postgres+psycopg://u:SECRET@h/db"]
)
def test_a_database_url_in_a_driver_dialect_is_refused_not_taken_for_sqlite(url: str) -> None:
    """``postgresql+DRIVER://`` (SQLAlchemy's form) names a PostgreSQL database: left
    alone, every replica would quietly run on a SQLite file of its own, its runs in no
    other replica's answers. It is refused, saying which form to write."""
    for name in ("TELEMETRY_DATABASE_URL", "DATABASE_URL"):
        with pytest.raises(InvalidDatabaseUrl, match=rf"{name}.*postgresql://") as caught:
            url_from_environment({name: url.replace("SECRET", SECRET)})
        assert "s3cr" not in str(caught.value)
