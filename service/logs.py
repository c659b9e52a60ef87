"""Logging: one JSON object per line, with the request id bound per request.

structlog renders the service's own events; the standard library's loggers (asyncpg's pool,
aiohttp's server errors) go through the same renderer, so a library's traceback becomes one
JSON line too. Logs go to stderr (stdout is for a command's result). Each line is written
with a single write call: several workers share stderr, and a line written in two calls can be
split by another worker's.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import msgspec
import structlog

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(level: str = "info", stream: TextIO = sys.stderr) -> None:
    render = structlog.processors.JSONRenderer(serializer=_json)
    handler = logging.StreamHandler(stream)  # writes message and newline in one call
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                render,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    logging.getLogger("aiohttp.server").addFilter(_no_request_text)
    # Libraries speak only when something is wrong. aiohttp's access log would print the path,
    # which holds URL tokens, so it is off and the service logs its own redacted line instead.
    root.setLevel(logging.WARNING)
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, render],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


def _no_request_text(record: logging.LogRecord) -> bool:
    """aiohttp.server reports a request its parser refused with the exception, whose text
    quotes the raw request line: a URL token, a signature. Keep the fact, drop the text."""
    if record.exc_info and record.exc_info[1] is not None:
        record.msg = f"{record.getMessage()} ({type(record.exc_info[1]).__name__})"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
    return True


def _json(event: dict[str, object], **_: object) -> str:
    return _encode(event).decode()


_encode = msgspec.json.Encoder(enc_hook=str).encode

log = structlog.get_logger("ledger")
