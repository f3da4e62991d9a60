"""The PostgreSQL database URL: read from the environment, checked, and shown without
its password (a log line or an error message never carries it).

A URL may name several hosts, as libpq's do (``postgresql://u:p@h1:5432,h2:5432/db
?target_session_attrs=read-write``): asyncpg tries them in order and keeps the first
that has the asked attributes, so after a standby is promoted the server's next
connection reaches the new primary with no setting changed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

#: The setting that switches the server to PostgreSQL; ``DATABASE_URL`` (the name the
#: reference implementation reads) is accepted when it is absent.
URL_SETTINGS: tuple[str, ...] = ("TELEMETRY_DATABASE_URL", "DATABASE_URL")
_SCHEMES = frozenset({"postgresql", "postgres"})
#: What ``target_session_attrs`` may ask (asyncpg's ``SessionAttribute``, libpq's names).
SESSION_ATTRS = frozenset(
    {"any", "primary", "standby", "prefer-standby", "read-write", "read-only"}
)
_MAX_PORT = 65535


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
    """Check a ``postgresql://`` URL (scheme, hosts or socket, database name, ports,
    ``target_session_attrs``)."""
    text = raw.strip()
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise InvalidDatabaseUrl(f"malformed database URL: {_reason(exc)}") from None
    redacted = _redact(text, parts)
    if parts.scheme not in _SCHEMES:
        if parts.scheme.partition("+")[0] in _SCHEMES:
            raise InvalidDatabaseUrl(
                f"database URL must be postgresql://..., without a driver name"
                f" ({parts.scheme}://; {redacted})"
            )
        raise InvalidDatabaseUrl(
            f"database URL scheme must be postgresql:// or postgres://, not {parts.scheme!r}"
            f" ({redacted})"
        )
    hosts = host_list(parts.netloc, redacted)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if not hosts and "host" not in query:
        raise InvalidDatabaseUrl(f"database URL names no host ({redacted})")
    if not parts.path.strip("/"):
        raise InvalidDatabaseUrl(f"database URL names no database ({redacted})")
    if parts.fragment:
        raise InvalidDatabaseUrl(f"database URL must not have a #fragment ({redacted})")
    attrs = query.get("target_session_attrs")
    if attrs is not None and attrs not in SESSION_ATTRS:
        raise InvalidDatabaseUrl(
            f"database URL target_session_attrs must be one of {', '.join(sorted(SESSION_ATTRS))}"
            f" ({redacted})"
        )
    return DatabaseUrl(dsn=text, redacted=redacted)


def host_list(netloc: str, redacted: str = "") -> list[tuple[str, int | None]]:
    """The ``host[:port]`` entries of a URL's network location, in order (a ``[v6]``
    address in brackets); [] when it names none (a socket given by ``?host=``).
    The user part is never looked at, so a password cannot end up in an error."""
    hostlist = netloc.rpartition("@")[2]
    if not hostlist:
        return []
    where = f" ({redacted})" if redacted else ""
    hosts: list[tuple[str, int | None]] = []
    for entry in hostlist.split(","):
        if entry.startswith("["):
            close = entry.find("]")
            host, rest = entry[1:close], entry[close + 1 :]
            if close < 0 or (rest and not rest.startswith(":")):
                raise InvalidDatabaseUrl(f"malformed database URL: cannot be parsed{where}")
            port_text = rest[1:]
        else:
            host, _, port_text = entry.partition(":")
        if not host:
            raise InvalidDatabaseUrl(f"database URL has an empty host in its host list{where}")
        port: int | None = None
        if port_text:
            if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > _MAX_PORT:
                raise InvalidDatabaseUrl(f"malformed database URL: invalid port{where}")
            port = int(port_text)
            if port == 0:
                raise InvalidDatabaseUrl(f"database URL port must be 1-65535{where}")
        hosts.append((host, port))
    return hosts


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
        scheme = value.partition(":")[0].lower()
        # postgresql+DRIVER:// (SQLAlchemy's form) is a PostgreSQL database too: refused
        # below (asyncpg reads no such scheme), never left for SQLite to answer instead.
        if name != URL_SETTINGS[0] and scheme.partition("+")[0] not in _SCHEMES:
            continue
        try:
            return parse_url(value)
        except InvalidDatabaseUrl as exc:
            raise InvalidDatabaseUrl(f"{name}: {exc}") from None
    return None


def _redact(text: str, parts: SplitResult) -> str:
    """The URL without secrets: the password in the user part and in ``?password=``."""
    if parts.password is None and (shown := _hide_unparsed_password(text)) != text:
        return shown
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


def _hide_unparsed_password(text: str) -> str:
    """``text`` with what may be a password urlsplit did not see hidden. A password
    holding ``#``, ``/`` or ``?`` not percent-encoded ends urlsplit's network location
    early (``u:ab#cd@h``: netloc ``u:ab``), so its parse finds no password; then from
    the first ``:`` of the user part to the last ``@`` is hidden, and any ``password=``
    after. A valid URL with an ``@`` past its host (rare) is shown hidden too: the shown
    form may hide too much, never too little."""
    scheme, sep, rest = text.partition("://")
    at = rest.rfind("@")
    colon = rest.find(":", 0, max(at, 0))
    if not sep or at < 0 or colon < 0:
        return text
    hidden = f"{scheme}://{rest[:colon]}:***{rest[at:]}"
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", hidden)


def _reason(exc: ValueError) -> str:
    # urlsplit's messages quote the offending part, which may be the password: keep
    # only the kind of problem.
    message = str(exc)
    return "invalid port" if "port" in message.lower() else "cannot be parsed"
