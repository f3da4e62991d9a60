"""spoold's status page (``/ui/``): the queue, the rates, the upstream and the dead letters
on one read-only, server-rendered page, for a person on the host (``spoold.ui.routes``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp_jinja2
import jinja2
from aiohttp import web

from spoold.http.state import SIDECAR
from spoold.ui import format as fmt
from spoold.ui.rates import RateRing, sample_forever
from spoold.ui.routes import RATES, routes

__all__ = ["install"]

_FILTERS = {
    "size": fmt.size,
    "duration": fmt.duration,
    "count": fmt.count,
    "rate": fmt.rate,
    "plural": fmt.plural,
    "instant": fmt.instant,
}


def install(app: web.Application) -> None:
    """Add the page's routes, its templates and the rate sampler (a cleanup context that
    must come after the one that builds ``SIDECAR``)."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("spoold.ui", "templates"),
        autoescape=True,  # every template, whatever its name: event ids and reasons are hostile
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(_FILTERS)
    app[RATES] = RateRing()
    app.add_routes(routes())
    app.cleanup_ctx.append(sampling_ctx)


async def sampling_ctx(app: web.Application) -> AsyncIterator[None]:
    """The rate ring's sampler, from start-up to the stop."""
    task = asyncio.create_task(
        sample_forever(app[RATES], app[SIDECAR].ledger), name="spoold-ui-rates"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
