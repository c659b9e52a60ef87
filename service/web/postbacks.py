"""The postback endpoint of every wall: /postbacks/{name} and /postbacks/{name}/{token}."""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web
from aiohttp.web import RequestPayloadError

from .. import keys, metrics
from ..db import Unavailable
from ..db.write import LogEntry, Receipt, Submission
from ..domain.events import Outcome
from ..logs import log
from ..providers.base import (
    Inbound,
    Invalid,
    IPAddress,
    Refused,
    TooLarge,
    TooSlow,
    Unauthenticated,
    check_source,
    client_address,
    plain,
)
from ..writer import Overloaded
from .walls import Wall


async def postback(request: web.Request) -> web.Response:
    started = time.perf_counter()
    walls = request.app[keys.WALLS]
    wall = walls.by_name.get(request.match_info["name"])
    token = request.match_info.get("token")
    # A provider with a URL token answers only on the long path, and one without only on the
    # short path, so the short path of a token-protected wall looks like any unknown address.
    if wall is None or (token is None) != (not wall.config.url_token):
        raise web.HTTPNotFound(text="unknown provider")

    client_ip = client_address(
        request.remote, request.headers.getall("X-Forwarded-For", []), walls.trusted_proxies
    )
    submission = await _intake(request, wall, token, client_ip)
    try:
        receipt = await request.app[keys.WRITER].submit(submission)
    except Overloaded as exc:
        # The access line carries the outcome and this detail: no second line per shed request.
        receipt = Receipt(
            Outcome.UNAVAILABLE, f"overloaded: {exc}", plain(503, "overloaded, retry later"), None
        )
    except Unavailable as exc:
        receipt = _unrecorded(wall, f"database unavailable: {exc}")
    except Exception:
        # A bug, not the caller's fault: nothing was committed, so the wall must retry.
        log.exception("postback not recorded: unexpected error")
        receipt = _unrecorded(wall)

    name = wall.config.name
    metrics.POSTBACKS.labels(provider=name, outcome=receipt.outcome.value).inc()
    metrics.POSTBACK_DURATION.labels(provider=name).observe(time.perf_counter() - started)
    # One line per request: the access line (middlewares.request_context) carries these.
    structlog.contextvars.bind_contextvars(
        provider=name,
        outcome=receipt.outcome.value,
        detail=receipt.detail,
        event_position=receipt.position,
        client_ip=submission.log.client_ip,
    )
    answer = receipt.answer
    response = web.Response(
        status=answer.status, text=answer.body, content_type=answer.content_type
    )
    if answer.status == 503:
        response.headers["Retry-After"] = "1"  # walls that honour it retry soon; others anyway
    return response


async def _intake(
    request: web.Request, wall: Wall, token: str | None, client_ip: IPAddress | None
) -> Submission:
    """Authenticate and normalise one request into what the write path takes."""
    protocol = wall.protocol
    server = request.app[keys.SETTINGS].server
    refusal: Refused | None = None
    body = b""
    try:
        async with asyncio.timeout(server.read_timeout):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        refusal = TooLarge(f"body larger than {server.max_body_bytes} bytes")
    except RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not
        refusal = Invalid(f"body cannot be read: {exc}")
    except TimeoutError:
        refusal = TooSlow(f"body not received within {server.read_timeout:g} seconds")
    inbound = Inbound(
        method=request.method,
        query=tuple(request.query.items()),
        content_type=request.headers.get("Content-Type", ""),
        body=body,
        client_ip=client_ip,
    )
    entry = LogEntry(
        request_id=_request_id(),
        provider=wall.config.name,
        method=request.method,
        client_ip=str(client_ip) if client_ip is not None else None,
        params=protocol.loggable(inbound),
    )
    try:
        if refusal is not None:
            raise refusal
        check_source(wall.allowed, inbound.client_ip, wall.config.url_token, token)
        normalised = protocol.normalise(wall.config, inbound)
    except Refused as exc:
        if isinstance(exc, Unauthenticated):
            metrics.SIGNATURE_FAILURES.labels(provider=wall.config.name, reason=exc.reason).inc()
        return Submission(
            entry,
            protocol.answer,
            refusal=exc.outcome,
            refusal_detail=exc.detail,
            refusal_status=exc.status,
        )
    return Submission(entry, protocol.answer, postback=normalised)


def _unrecorded(wall: Wall, detail: str = "database unavailable") -> Receipt:
    answer = wall.protocol.answer(Outcome.UNAVAILABLE, "")
    if answer.status != 503:
        answer = plain(503, "database unavailable, retry later")
    return Receipt(Outcome.UNAVAILABLE, detail, answer, None)


def _request_id() -> str:
    request_id = structlog.contextvars.get_contextvars().get("request_id", "")
    return str(request_id)
