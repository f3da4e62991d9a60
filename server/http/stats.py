"""``GET /api/v1/stats``: runs grouped and summarised (see ``server.storage.stats``)."""

from __future__ import annotations

from aiohttp import web

from server.contract.errors import ValidationFailed
from server.contract.stats import StatsQuery
from server.contract.validation import parse_model
from server.edge.responses import json_response
from server.http.backend import sqlite_only
from server.storage.stale import now_utc, overdue_ids_sql
from server.storage.stats import PERCENTILES_NOTE, TooManyGroups, read_stats, rollups_serve

routes = web.RouteTableDef()


def parse_stats_query(request: web.Request) -> StatsQuery:
    """The query string as a StatsQuery; a repeated ``group_by`` counts as one list, and an
    empty filter means no filter (as the list has it)."""
    params: dict[str, object] = {
        key: value for key, value in request.query.items() if key != "group_by" and value != ""
    }
    group_by = [value for value in request.query.getall("group_by", []) if value != ""]
    if group_by:
        params["group_by"] = ",".join(group_by)
    return parse_model(StatsQuery, params, location="query")


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    query = parse_stats_query(request)
    # What a read costs depends on which parts it reads (see Reader.run's shape).
    shape = ("stats", tuple(query.group_by), rollups_serve(query), query.stale)
    database = sqlite_only(request.app, "GET /api/v1/stats", "read the runs with GET /api/v1/runs")
    overdue = None if query.stale is None else overdue_ids_sql(database.settings.stale, now_utc())
    try:
        groups = await database.reader.run(
            lambda conn: read_stats(conn, query, overdue), shape=shape
        )
    except TooManyGroups as exc:
        raise ValidationFailed(
            [{"loc": ["query", "group_by"], "msg": str(exc), "type": "too_many_groups"}]
        ) from exc
    filters = query.model_dump(exclude={"group_by"}, exclude_none=True)
    return json_response(
        {
            "group_by": list(query.group_by),
            "filters": filters,
            "percentiles": PERCENTILES_NOTE,
            "groups": groups,
        }
    )
