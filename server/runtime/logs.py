"""structlog configured for JSON lines on stdout, rendered by orjson.

Event names are stable snake_case; a request is one ``http_request`` line at
INFO, so WARNING keeps the log quiet under load. Headers are never logged.
"""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO, TextIO

import orjson
import structlog


def configure_logging(level: str = "INFO", *, stream: BinaryIO | TextIO | None = None) -> None:
    """Route structlog (and stdlib logging, e.g. aiohttp's) to JSON lines on stdout."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(_binary(stream or sys.stdout)),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
    logging.getLogger("aiohttp.access").disabled = True


def _binary(stream: BinaryIO | TextIO) -> BinaryIO:
    buffer = getattr(stream, "buffer", None)
    return buffer if buffer is not None else stream  # type: ignore[return-value]
