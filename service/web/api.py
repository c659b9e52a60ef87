"""The internal API (README, Internal API): wallets, their events, and the postback log.

Wallets, wallet events, receipt offers and the postback log read through `keys.READ_POOL`: the
streaming replica of `database.read_url` when there is one, so they may lag the primary by the
replication delay (the answers of spending and of postbacks are built on the primary, in the
write transaction). The global feed reads the primary: see `get_events`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from .. import keys
from ..db import read
from ..domain.amounts import EXACT, format_amount
from ..domain.events import Event, Outcome
from .auth import requires
from .middlewares import ApiError
from .openapi import Operation, Param

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT = 30.0  # seconds a feed request may long-poll
_WAIT = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")
_FEED_CURSOR = re.compile(r"f([0-9]{1,20})\.([0-9]{1,19})")
_MAX_POSITION = 2**63 - 1
_CURSOR = re.compile(r"p([0-9]{1,19})")
_LOG_CURSOR = re.compile(r"t(-?[0-9]{1,19})\.([0-9]{1,19})")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_SPACED_OFFSET = re.compile(r"[0-9] [0-9]{2}:[0-9]{2}\Z")
_NUMBER = re.compile(r"[0-9]{1,19}")  # ASCII: str.isdigit() also admits "²"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]{1,64}")


class WalletBody(msgspec.Struct):
    user_id: str
    balance: str  # total_credited - total_reversed - total_debited; below zero after a chargeback
    total_credited: str
    total_reversed: str
    total_debited: str
    held: str  # the sum of the wallet's live holds
    available: str  # balance - held: what a debit or a hold may take
    event_count: int
    updated_at: dt.datetime


class EventBody(msgspec.Struct):
    position: int
    type: str
    provider: str
    provider_ref: str
    user_id: str
    amount: str
    test: bool
    recorded_at: dt.datetime
    data: dict[str, Any]
    hash: str


class EventsPage(msgspec.Struct):
    events: list[EventBody]
    next: str | None


class FeedPage(msgspec.Struct):
    events: list[EventBody]
    next: str


class ReceiptOfferBody(msgspec.Struct):
    provider: str
    upload_offer_id: str
    upload_id: str
    offer_id: str
    user_id: str
    status: str
    points_credited: str
    approvals: int
    event_count: int
    updated_at: dt.datetime
    events: list[EventBody]
    next: str | None


class PostbackBody(msgspec.Struct):
    id: int
    received_at: dt.datetime
    request_id: str
    provider: str
    outcome: str
    http_status: int
    detail: str
    client_ip: str | None
    method: str
    params: dict[str, str]
    event_position: int | None
    user_id: str | None  # as the request named it, authenticated or not
    transaction: str | None  # the wall's transaction id, as the request named it
    reason: str | None  # why authentication failed: signature, token, source_ip or replay


class PostbacksPage(msgspec.Struct):
    postbacks: list[PostbackBody]
    next: str | None


# Amounts are formatted strings; a Decimal here is a number inside an event's data (a receipt's
# JSON), kept a JSON number with its exact digits.
_encode = msgspec.json.Encoder(decimal_format="number").encode


def _json(body: msgspec.Struct) -> web.Response:
    return json_body(200, _encode(body))


def json_body(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> int:
    """A position from an opaque cursor, or from a plain number; ApiError 400 otherwise."""
    if _NUMBER.fullmatch(text):
        value = int(text)
    else:
        match = _CURSOR.fullmatch(_unbase64(text))
        if match is None:
            raise ApiError(400, "invalid_cursor", "cursor is not one this API handed out")
        value = int(match.group(1))
    if value > _MAX_POSITION:
        raise ApiError(400, "invalid_cursor", "cursor is out of range")
    return value


def encode_feed_cursor(txid: int, position: int) -> str:
    return base64.urlsafe_b64encode(f"f{txid}.{position}".encode()).decode().rstrip("=")


def decode_feed_cursor(text: str) -> tuple[int, int]:
    match = _FEED_CURSOR.fullmatch(_unbase64(text))
    if match is None:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API handed out")
    txid, position = int(match.group(1)), int(match.group(2))
    if txid > _MAX_POSITION or position > _MAX_POSITION:
        raise ApiError(400, "invalid_cursor", "cursor is out of range")
    return txid, position


def encode_log_cursor(received_at: dt.datetime, postback_id: int) -> str:
    micros = (received_at - _EPOCH) // _MICROSECOND
    return base64.urlsafe_b64encode(f"t{micros}.{postback_id}".encode()).decode().rstrip("=")


def decode_log_cursor(text: str) -> read.LogFilter:
    """Where a page of the postback log ends: a cursor of ours, or a postback's id."""
    match = _LOG_CURSOR.fullmatch(_unbase64(text))
    if match is None:
        return read.LogFilter(before_id=decode_cursor(text))
    postback_id = int(match.group(2))
    try:
        at = _EPOCH + int(match.group(1)) * _MICROSECOND
    except OverflowError:
        at = None
    if at is None or postback_id > _MAX_POSITION:
        raise ApiError(400, "invalid_cursor", "cursor is out of range")
    return read.LogFilter(before=(at, postback_id))


def time_param(
    query: Mapping[str, str], name: str, *, naive_utc: bool = False
) -> dt.datetime | None:
    """An RFC 3339 time (`2026-11-29T08:00:00Z`), or None when absent; ApiError 400 otherwise.
    `naive_utc`: a time without an offset is UTC (what an HTML form's datetime-local sends)."""
    text = query.get(name, "")
    if not text:
        return None
    if _SPACED_OFFSET.search(text):
        # `+02:00` typed into a URL unescaped arrives as ` 02:00`: a space is no offset sign.
        text = text[:-6] + "+" + text[-5:]
    try:
        value = dt.datetime.fromisoformat(text) if len(text) <= 40 else None
    except ValueError:
        value = None
    if value is None:
        raise ApiError(400, f"invalid_{name}", f"{name} must be a time like 2026-11-29T08:00:00Z")
    if value.tzinfo is None:
        if not naive_utc:
            raise ApiError(
                400, f"invalid_{name}", f"{name} must give its offset, like 2026-11-29T08:00:00Z"
            )
        value = value.replace(tzinfo=dt.UTC)
    try:
        value = value.astimezone(dt.UTC)  # 0001-01-01T00:00+02:00 is not a datetime in UTC
    except OverflowError:
        raise ApiError(400, f"invalid_{name}", f"{name} is out of range") from None
    return value


def postback_filter(query: Mapping[str, str], *, naive_utc: bool = False) -> read.LogFilter:
    """The postback log's filters from a query (the API's, or an operator page's form)."""
    outcome = query.get("outcome") or None
    if outcome is not None and outcome not in {o.value for o in Outcome}:
        raise ApiError(400, "invalid_outcome", f"outcome must be one of {', '.join(Outcome)}")
    texts = {
        name: text_param(query[name], name) if query.get(name) else None
        for name in ("provider", "user", "transaction")
    }
    since = time_param(query, "since", naive_utc=naive_utc)
    until = time_param(query, "until", naive_utc=naive_utc)
    if since is not None and until is not None and until <= since:
        raise ApiError(400, "invalid_until", "until must be later than since")
    page = decode_log_cursor(query["before"]) if query.get("before") else read.LogFilter()
    return dataclasses.replace(
        page,
        provider=texts["provider"],
        outcome=outcome,
        user_id=texts["user"],
        transaction=texts["transaction"],
        since=since,
        until=until,
    )


def postback_body(row: Mapping[str, Any]) -> PostbackBody:
    return PostbackBody(**dict(row))


def _unbase64(text: str) -> str:
    if not _BASE64URL.fullmatch(text):
        return ""
    try:
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""


def _wait(request: web.Request) -> float:
    text = request.query.get("wait", "0")
    if not _WAIT.fullmatch(text):
        raise ApiError(
            400, "invalid_wait", f"wait must be a number of seconds (at most {MAX_WAIT:g})"
        )
    return min(float(text), MAX_WAIT)


def text_param(value: str, name: str) -> str:
    """A path or query value the database can compare: no NUL, valid UTF-8, bounded."""
    if len(value) > 255 or "\x00" in value:
        raise ApiError(400, f"invalid_{name}", f"{name} must be at most 255 characters, no NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"invalid_{name}", f"{name} is not valid UTF-8") from None
    return value


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(DEFAULT_LIMIT))
    if not _NUMBER.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def event_body(event: Event) -> EventBody:
    return EventBody(
        position=event.position,
        type=event.type.value,
        provider=event.provider,
        provider_ref=event.provider_ref,
        user_id=event.user_id,
        amount=format_amount(event.amount),
        test=event.test,
        recorded_at=event.recorded_at,
        data=event.data,
        hash=event.hash,
    )


@requires("read")
async def get_wallet(request: web.Request) -> web.Response:
    user_id = text_param(request.match_info["user_id"], "user_id")
    row = await read.wallet(request.app[keys.READ_POOL], user_id)
    if row is None:
        raise ApiError(404, "wallet_not_found", f"no wallet for user {user_id!r}")
    return _json(
        WalletBody(
            user_id=row["user_id"],
            balance=format_amount(row["balance"]),
            total_credited=format_amount(row["total_credited"]),
            total_reversed=format_amount(row["total_reversed"]),
            total_debited=format_amount(row["total_debited"]),
            held=format_amount(row["held"]),
            available=format_amount(EXACT.subtract(row["balance"], row["held"])),
            event_count=row["event_count"],
            updated_at=row["updated_at"],
        )
    )


@requires("read")
async def get_wallet_events(request: web.Request) -> web.Response:
    after = decode_cursor(request.query["after"]) if request.query.get("after") else 0
    limit = _limit(request)
    user_id = text_param(request.match_info["user_id"], "user_id")
    events = await read.wallet_events(request.app[keys.READ_POOL], user_id, after, limit)
    next_cursor = encode_cursor(events[-1].position) if len(events) == limit else None
    return _json(EventsPage(events=[event_body(e) for e in events], next=next_cursor))


@requires("read")
async def get_receipt_offer(request: web.Request) -> web.Response:
    after = decode_cursor(request.query["after"]) if request.query.get("after") else 0
    limit = _limit(request)
    provider = text_param(request.match_info["provider"], "provider")
    offer = text_param(request.match_info["upload_offer_id"], "upload_offer_id")
    # One more than asked: whether a next page exists, so that `next` is null on the last.
    row, events = await read.receipt_offer(
        request.app[keys.READ_POOL], provider, offer, after, limit + 1
    )
    if row is None:
        raise ApiError(
            404, "receipt_offer_not_found", f"no receipt offer {offer!r} of {provider!r}"
        )
    page = events[:limit]
    next_cursor = encode_cursor(page[-1].position) if len(events) > limit else None
    return _json(
        ReceiptOfferBody(
            provider=row["provider"],
            upload_offer_id=row["upload_offer_id"],
            upload_id=row["upload_id"],
            offer_id=row["offer_id"],
            user_id=row["user_id"],
            status=row["status"],
            points_credited=format_amount(row["points_credited"]),
            approvals=row["approvals"],
            event_count=row["event_count"],
            updated_at=row["updated_at"],
            events=[event_body(e) for e in page],
            next=next_cursor,
        )
    )


@requires("read")
async def get_postbacks(request: web.Request) -> web.Response:
    where = postback_filter(request.query)
    limit = _limit(request)
    rows = await read.postbacks(request.app[keys.READ_POOL], where, limit)
    bodies = [postback_body(r) for r in rows]
    last = bodies[-1] if len(bodies) == limit else None
    next_cursor = None if last is None else encode_log_cursor(last.received_at, last.id)
    return _json(PostbacksPage(postbacks=bodies, next=next_cursor))


@requires("read")
async def get_postback(request: web.Request) -> web.Response:
    text = request.match_info["postback_id"]
    row = None
    if _NUMBER.fullmatch(text) and int(text) <= _MAX_POSITION:
        row = await read.postback(request.app[keys.READ_POOL], int(text))
    if row is None:
        raise ApiError(404, "postback_not_found", f"no postback {text[:40]!r} in the log")
    return _json(postback_body(row))


@requires("read")
async def get_events(request: web.Request) -> web.Response:
    """The global feed: every event exactly once, oldest first, long-polling on `wait`.

    Always the primary (`keys.POOL`): a page ends before the oldest transaction still running
    (pg_current_snapshot's xmin), so that no event can commit later behind a cursor handed out.
    A standby's snapshot is not the primary's: its xmin follows the WAL replayed so far, and a
    cursor taken there could name a point the primary has not settled, or go back when another
    replica, further behind, answers the next page. The watcher (service/feed.py) listens on
    the primary too (NOTIFY is not replicated)."""
    query = request.query
    after = decode_feed_cursor(query["after"]) if query.get("after") else (0, 0)
    limit, wait = _limit(request), _wait(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    pool, feed = request.app[keys.POOL], request.app[keys.FEED]
    page = await read.feed(pool, after, limit)
    # Query again only when the feed's watcher says something is servable after the cursor;
    # stop waiting once the client has disconnected.
    while not page and (remaining := deadline - loop.time()) > 0:
        if not await feed.wait(after, remaining, gone=lambda: _client_gone(request)):
            break
        page = await read.feed(pool, after, limit)
        if not page:
            break  # woken for nothing (a failed head query): answer, never spin on queries
    if page:
        last, txid = page[-1]
        after = (txid, last.position)
    return _json(FeedPage(events=[event_body(e) for e, _ in page], next=encode_feed_cursor(*after)))


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


_CURSOR_PARAM = "an opaque cursor: the `next` of the previous page"
_CURSOR_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
_LIMIT = Param(
    "limit",
    "query",
    f"page size (default {DEFAULT_LIMIT})",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
)
_USER = Param("user_id", "path", "the user's id as the walls send it")
_TIME_SCHEMA = {"type": "string", "format": "date-time"}
_AFTER = Param(
    "after",
    "query",
    _CURSOR_PARAM + ", or an event position",
    {"type": "string", "pattern": "^([A-Za-z0-9_-]{1,64}|[0-9]{1,19})$"},
)

# The read routes (web/catalogue.py adds the spending routes and the document itself).
READS = (
    Operation("/v1/wallets/{user_id}", get_wallet, "A user's wallet", WalletBody, (_USER,)),
    Operation(
        "/v1/wallets/{user_id}/events",
        get_wallet_events,
        "A wallet's events, oldest first; gap-free by position",
        EventsPage,
        (_USER, _AFTER, _LIMIT),
    ),
    Operation(
        "/v1/events",
        get_events,
        "The global feed: every event exactly once, oldest first",
        FeedPage,
        (
            Param("after", "query", _CURSOR_PARAM, _CURSOR_SCHEMA),
            _LIMIT,
            Param(
                "wait",
                "query",
                f"seconds to long-poll while nothing is new (at most {MAX_WAIT:g} are used)",
                {"type": "number", "minimum": 0},
            ),
        ),
    ),
    Operation(
        "/v1/receipt-offers/{provider}/{upload_offer_id}",
        get_receipt_offer,
        "A receipt offer's state and one page of its history, oldest first; gap-free by position",
        ReceiptOfferBody,
        (
            Param("provider", "path", "the provider name"),
            Param("upload_offer_id", "path", "AdGate's shm_upload_offer_id"),
            _AFTER,
            _LIMIT,
        ),
    ),
    Operation(
        "/v1/postbacks",
        get_postbacks,
        "The postback log, newest first",
        PostbacksPage,
        (
            Param("provider", "query", "only this provider"),
            Param("outcome", "query", "only this outcome", {"enum": [o.value for o in Outcome]}),
            Param("user", "query", "only postbacks naming this user id (refused ones included)"),
            Param("transaction", "query", "only postbacks naming this transaction id"),
            Param("since", "query", "received at or after this RFC 3339 time", _TIME_SCHEMA),
            Param("until", "query", "received before this RFC 3339 time", _TIME_SCHEMA),
            Param("before", "query", _CURSOR_PARAM, _CURSOR_SCHEMA),
            _LIMIT,
        ),
    ),
    Operation(
        "/v1/postbacks/{postback_id}",
        get_postback,
        "One postback of the log",
        PostbackBody,
        (Param("postback_id", "path", "the postback's id", {"type": "integer", "minimum": 1}),),
    ),
)
