"""The postback endpoint of every wall: /postbacks/{name} and /postbacks/{name}/{token}, and for
walls whose reversals come to an address of their own, the same followed by /reversal."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import msgspec
from aiohttp import web
from aiohttp.web import RequestPayloadError

from .. import keys, live, metrics
from ..db import Unavailable
from ..db.write import LogEntry, Receipt, Submission, refusal_receipt
from ..domain.amounts import format_amount
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
    compact,
    identify,
    plain,
)
from ..writer import Overloaded, Writer
from .middlewares import ACCESS, REQUEST_ID
from .walls import Wall


async def postback(request: web.Request) -> web.Response:
    started = time.perf_counter()
    walls = live.of(request).walls
    wall = walls.by_name.get(request.match_info["name"])
    token = request.match_info.get("token")
    reversal = request.match_info.get("reversal") == "reversal"
    # A provider with a URL token answers only on the long path, and one without only on the
    # short path, so the short path of a token-protected wall looks like any unknown address.
    if (
        wall is None
        or (token is None) != (not wall.tokens)
        or (reversal and not wall.reversal_endpoint)
    ):
        raise web.HTTPNotFound(text="unknown provider")

    client_ip = client_address(
        request.remote, request.headers.getall("X-Forwarded-For", []), walls.trusted_proxies
    )
    try:
        submission = await _intake(request, wall, token, client_ip, reversal)
    except Exception:
        # A bug, not the caller's fault: nothing was recorded, so the wall must retry.
        log.exception("postback not read: unexpected error")
        submission = None
    if submission is None:
        receipt = _unrecorded(wall)
    elif submission.postback is None:
        receipt = await _refuse(request.app[keys.REFUSALS], submission)
    else:
        receipt = await _record(request.app[keys.WRITER], wall, submission)

    name = wall.config.name
    metrics.postback(name, receipt.outcome, time.perf_counter() - started)
    # One line per request: the access line (middlewares.handling) carries these.
    request[ACCESS].update(
        provider=name,
        outcome=receipt.outcome.value,
        detail=receipt.detail,
        event_position=receipt.position,
        client_ip=str(client_ip) if client_ip is not None else None,
    )
    answer = receipt.answer
    response = web.Response(
        status=answer.status, text=answer.body, content_type=answer.content_type
    )
    if answer.status == 503:
        response.headers["Retry-After"] = "1"  # walls that honour it retry soon; others anyway
    return response


async def _record(writer: Writer, wall: Wall, submission: Submission) -> Receipt:
    try:
        return await writer.submit(submission)
    except Overloaded as exc:
        # Shed, not down: the database answers, the queue before it is full. Nothing is recorded
        # and no postback log row is written (the queue is what writes it); the access line
        # carries the outcome and this detail: no second line per shed request.
        return Receipt(
            Outcome.SHED, f"overloaded: {exc}", plain(503, "overloaded, retry later"), None
        )
    except Unavailable as exc:
        return _unrecorded(wall, f"database unavailable: {exc}")
    except Exception:
        # A bug, not the caller's fault: nothing was committed, so the wall must retry.
        log.exception("postback not recorded: unexpected error")
        return _unrecorded(wall)


async def _refuse(refusals: Writer, submission: Submission) -> Receipt:
    """Log a refusal through the refusals' own queue; answer it even when that cannot be done.
    A refusal moves no money, so its answer does not depend on its log row: a flood of them is
    answered at once and never waits in the queue of authenticated postbacks."""
    try:
        return await refusals.submit(submission)
    except Exception as exc:  # full, or the database is away: the refusal stands all the same
        if not isinstance(exc, Overloaded | Unavailable):
            log.exception("refusal not logged: unexpected error")
        metrics.REFUSALS_UNLOGGED.labels(provider=submission.log.provider).inc()
        return refusal_receipt(submission)


async def _intake(
    request: web.Request,
    wall: Wall,
    token: str | None,
    client_ip: IPAddress | None,
    reversal: bool = False,
) -> Submission:
    """Authenticate and normalise one request into what the write path takes."""
    protocol = wall.protocol
    server = live.of(request).settings.server
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
        headers=tuple(request.headers.items()),
        raw_path=request.raw_path,
        reversal=reversal,
    )
    answer = wall.answering(inbound)
    entry = LogEntry(
        request_id=request[REQUEST_ID],
        provider=wall.config.name,
        method=request.method,
        client_ip=str(client_ip) if client_ip is not None else None,
        params=protocol.loggable(inbound),
    )
    try:
        if refusal is not None:
            raise refusal
        used = check_source(wall.allowed, inbound.client_ip, wall.tokens, token)
        if used and not wall.config.secret_list():  # a provider has secrets or tokens
            metrics.secret_used(wall.config.name, used)
        normalised = protocol.normalise(wall.config, inbound)
        if wall.max_amount is not None and normalised.amount > wall.max_amount:
            raise Invalid(
                f"amount {format_amount(normalised.amount)} is above this wall's max_amount"
                f" {format_amount(wall.max_amount)}"
            )
    except Refused as exc:
        if isinstance(exc, Unauthenticated):
            metrics.SIGNATURE_FAILURES.labels(provider=wall.config.name, reason=exc.reason).inc()
        # Whoever sent a refused request chose its size: keep a bounded part of it, and
        # whom and which transaction it named, so that support finds it.
        user_id, transaction = identify(entry.params, protocol.IDENTITY)
        entry = dataclasses.replace(
            entry, params=compact(entry.params), user_id=user_id, transaction=transaction
        )
        return Submission(
            entry,
            answer,
            refusal=exc.outcome,
            refusal_detail=exc.detail,
            refusal_status=exc.status,
            refusal_reason=exc.reason if isinstance(exc, Unauthenticated) else None,
        )
    recorded_as = wall.config.recorded_as()
    if normalised.provider != recorded_as:  # a renamed wall: its events keep the old name
        normalised = msgspec.structs.replace(normalised, provider=recorded_as)
    return Submission(entry, answer, postback=normalised)


def _unrecorded(wall: Wall, detail: str = "database unavailable") -> Receipt:
    answer = wall.protocol.answer(Outcome.UNAVAILABLE, "")
    if answer.status != 503:
        answer = plain(503, "database unavailable, retry later")
    return Receipt(Outcome.UNAVAILABLE, detail, answer, None)
