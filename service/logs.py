"""Logging: one JSON object per line, with the request id bound per request.

structlog renders the service's own events; the standard library's loggers (asyncpg's pool,
aiohttp's server errors) go through the same renderer, so a library's traceback becomes one
JSON line too. Logs go to stderr (stdout is for a command's result). Each line is written
with a single write call: several workers share stderr, and a line written in two calls can be
split by another worker's.

The access line (one per request, `access`) is the hottest line by far, so it is rendered
directly (one msgspec encode, one write) rather than through structlog's processor chain; it
has the same fields and format as a line logged with `log.info("request", ...)`, which is what
it falls back to whenever structlog is configured otherwise (a test capturing logs).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, TextIO

import msgspec
import structlog

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class _Direct:
    """Where `access` writes while structlog's last processor is still `render` (set by
    `configure`; a test capturing logs puts its own last)."""

    stream: TextIO | None = None
    render: structlog.typing.Processor | None = None
    enabled = False  # whether info lines are kept at the configured level


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
    processors: list[structlog.typing.Processor] = [
        *_SHARED,
        structlog.processors.format_exc_info,
        render,
    ]
    number = logging.getLevelNamesMapping()[level.upper()]
    _Direct.stream, _Direct.render, _Direct.enabled = stream, render, number <= logging.INFO
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(number),
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


def begin_request(request_id: str) -> None:
    """Bind `request_id` to every line logged while this request is served. It is the only
    field a request binds (so nothing bound by an earlier request on the same connection can
    linger): the access line takes its other fields from `access`'s argument."""
    structlog.contextvars.bind_contextvars(request_id=request_id)


def access(request_id: str, fields: dict[str, Any]) -> None:
    """The access line of a request: `{"request_id", **fields, "event": "request", "level",
    "timestamp"}`, as structlog renders `log.info("request", **fields)` in this request."""
    stream, processors = _Direct.stream, structlog.get_config()["processors"]
    if stream is None or not processors or processors[-1] is not _Direct.render:
        log.info("request", **fields)
        return
    if not _Direct.enabled:
        return
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    line = {"request_id": request_id, **fields, "event": "request", "level": "info"}
    line["timestamp"] = now
    stream.write(_encode(line).decode() + "\n")
    stream.flush()
