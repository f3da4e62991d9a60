"""structlog configured for JSON lines on stdout, rendered by orjson.

Event names are stable snake_case; a request is one ``http_request`` line at
INFO, so WARNING keeps the log quiet under load. Headers are never logged.

Writing a line never raises (``LossyStream``): a log on a full disk, a closed pipe or a
failing device used to make every request that logged fail with a 500 (a write the
database had already committed among them: the access line comes after the handler), and
stopped a daemon at its first start-up line. The lines that could not be written are
counted, and the first line written after them says how many (``log_lines_dropped``).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import BinaryIO, TextIO, cast

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
        # BytesLogger uses only write and flush, which LossyStream has.
        logger_factory=structlog.BytesLoggerFactory(
            cast(BinaryIO, LossyStream(_binary(stream or sys.stdout)))
        ),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
    logging.getLogger("aiohttp.access").disabled = True


def _binary(stream: BinaryIO | TextIO) -> BinaryIO:
    buffer = getattr(stream, "buffer", None)
    return buffer if buffer is not None else stream  # type: ignore[return-value]


class LossyStream:
    """A binary stream whose ``write`` and ``flush`` never raise (see the module docstring)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        #: Lines not written (or not flushed) since the last line that was.
        self.dropped = 0

    def write(self, data: bytes) -> int:
        try:
            if self.dropped:
                self._raw.write(_dropped_line(self.dropped))
                self.dropped = 0
            return self._raw.write(data)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.dropped += 1
            return 0

    def flush(self) -> None:
        try:
            self._raw.flush()
        except (OSError, ValueError):  # the line written into the buffer is not out
            self.dropped += 1


def _dropped_line(count: int) -> bytes:
    event = {
        "count": count,
        "event": "log_lines_dropped",
        "level": "warning",
        "timestamp": datetime.now(UTC).isoformat(),
    }
    return orjson.dumps(event) + b"\n"
