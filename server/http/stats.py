"""``GET /api/v1/stats``: runs grouped and summarised (see ``server.storage.stats``)."""

from __future__ import annotations

from aiohttp import web

from server.contract.errors import ValidationFailed
from server.contract.stats import StatsQuery
from server.contract.validation import parse_model
from server.edge.responses import json_response
from server.http.runs import DATABASE
from server.storage.stats import PERCENTILES_NOTE, TooManyGroups

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
    try:
        groups = await request.app[DATABASE].stats(query)
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
