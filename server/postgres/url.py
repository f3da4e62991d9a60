"""The PostgreSQL database URL: read from the environment, checked, and shown without
its password (a log line or an error message never carries it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

#: The setting that switches the server to PostgreSQL; ``DATABASE_URL`` (the name the
#: reference implementation reads) is accepted when it is absent.
URL_SETTINGS: tuple[str, ...] = ("TELEMETRY_DATABASE_URL", "DATABASE_URL")
_SCHEMES = frozenset({"postgresql", "postgres"})


class InvalidDatabaseUrl(ValueError):
    """A database URL this backend cannot use; the message never holds the password."""


@dataclass(frozen=True)
class DatabaseUrl:
    #: The URL as given, for the driver only: it may hold the password.
    dsn: str = ""
    #: The URL with the password replaced by ``***``: the form to log or show.
    redacted: str = ""

    def __repr__(self) -> str:  # a stray repr() in a log must not leak the password
        return f"DatabaseUrl({self.redacted!r})"


def parse_url(raw: str) -> DatabaseUrl:
    """Check a ``postgresql://`` URL (scheme, host or socket, database name, port)."""
    text = raw.strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError when not a number in 0..65535
    except ValueError as exc:
        raise InvalidDatabaseUrl(f"malformed database URL: {_reason(exc)}") from None
    redacted = _redact(text, parts)
    if parts.scheme not in _SCHEMES:
        raise InvalidDatabaseUrl(
            f"database URL scheme must be postgresql:// or postgres://, not {parts.scheme!r}"
            f" ({redacted})"
        )
    if not parts.hostname and "host" not in dict(parse_qsl(parts.query)):
        raise InvalidDatabaseUrl(f"database URL names no host ({redacted})")
    if port == 0:
        raise InvalidDatabaseUrl(f"database URL port must be 1-65535 ({redacted})")
    if not parts.path.strip("/"):
        raise InvalidDatabaseUrl(f"database URL names no database ({redacted})")
    if parts.fragment:
        raise InvalidDatabaseUrl(f"database URL must not have a #fragment ({redacted})")
    return DatabaseUrl(dsn=text, redacted=redacted)


def url_from_environment(environ: Mapping[str, str]) -> DatabaseUrl | None:
    """The configured URL (``TELEMETRY_DATABASE_URL``, else ``DATABASE_URL``), or None:
    SQLite. An empty value counts as absent. ``DATABASE_URL`` is a name other software
    reads too (often ``sqlite:///...``): only a ``postgresql://`` or ``postgres://`` one
    is taken as meant for this server, any other is left alone, so an environment shared
    with such tools keeps the SQLite default."""
    for name in URL_SETTINGS:
        value = environ.get(name, "").strip()
        if not value:
            continue
        if name != URL_SETTINGS[0] and value.partition(":")[0].lower() not in _SCHEMES:
            continue
        try:
            return parse_url(value)
        except InvalidDatabaseUrl as exc:
            raise InvalidDatabaseUrl(f"{name}: {exc}") from None
    return None


def _redact(text: str, parts: SplitResult) -> str:
    """The URL without secrets: the password in the user part and in ``?password=``."""
    query = parse_qsl(parts.query, keep_blank_values=True)
    if parts.password is None and all(key != "password" for key, _ in query):
        return text
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if any(key == "password" for key, _ in query):
        hidden = [(key, "***" if key == "password" else value) for key, value in query]
        parts = parts._replace(query=urlencode(hidden, safe="*/"))
    return parts.geturl()


def _reason(exc: ValueError) -> str:
    # urlsplit's messages quote the offending part, which may be the password: keep
    # only the kind of problem.
    message = str(exc)
    return "invalid port" if "port" in message.lower() else "cannot be parsed"
