"""Endpoints that need what only SQLite has (the file, its backup, VACUUM): on
PostgreSQL they answer 501 with a JSON error saying what to use instead, never a 500.
The dashboard is not one of them: it reads through ``RunStore.read_dashboard``."""

from __future__ import annotations

from aiohttp import web

from server.contract.errors import ApiError
from server.http.runs import DATABASE
from server.storage.database import Database


class NotOnThisBackend(ApiError):
    status = 501
    code = "not_supported_on_postgresql"


def sqlite_only(app: web.Application, what: str, instead: str) -> Database:
    """The SQLite database, or a 501 naming ``what`` is not served on PostgreSQL and
    what to use ``instead``."""
    database = app[DATABASE]
    if isinstance(database, Database):
        return database
    raise NotOnThisBackend(f"{what} is not available on PostgreSQL yet: {instead}")
