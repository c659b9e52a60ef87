"""The spending API (README, Spending): debits, internal credits and holds, each POST with an
Idempotency-Key. The rules are decided in domain/spending.py, under the user's lock, by the
write path; this module parses requests and renders answers."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from decimal import Decimal
from typing import Any

import msgspec
from aiohttp import web

from .. import keys, metrics
from ..db import read
from ..db.write import Spend, Spent
from ..domain import holds
from ..domain.amounts import AmountError, format_amount, parse_amount
from ..domain.spending import Command, Kind, Refusal
from ..providers.base import storable_json
from ..writer import Overloaded
from .api import EventBody, WalletBody, event_body, json_body, text_param
from .auth import API_KEY, requires
from .middlewares import ApiError, error_body, json_error
from .openapi import Operation, Param

_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
DATA_LIMIT = 4096  # bytes of a request's `data` kept with its event
_REFERENCE_LIMIT = 255


class AmountRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: str
    reference: str | None = None
    data: dict[str, Any] | None = None  # kept with the event; its numbers stay exact


class HoldRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: str
    expires_in: int = holds.DEFAULT_SECONDS
    reference: str | None = None
    data: dict[str, Any] | None = None  # kept with the event; its numbers stay exact


class CaptureRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: str | None = None


class VoidRequest(msgspec.Struct, forbid_unknown_fields=True):
    pass


class HoldBody(msgspec.Struct):
    hold_id: str
    user_id: str
    amount: str
    status: str
    captured: str
    released: str
    expires_at: dt.datetime
    reference: str | None


class DebitAnswer(msgspec.Struct):
    debit: EventBody
    wallet: WalletBody


class CreditAnswer(msgspec.Struct):
    credit: EventBody
    wallet: WalletBody


class HoldAnswer(msgspec.Struct):
    hold: HoldBody
    wallet: WalletBody


_REQUESTS: dict[Kind, type[msgspec.Struct]] = {
    Kind.DEBIT: AmountRequest,
    Kind.CREDIT: AmountRequest,
    Kind.HOLD: HoldRequest,
    Kind.CAPTURE: CaptureRequest,
    Kind.VOID: VoidRequest,
}
# Numbers in `data` become decimals, never floats, so that they are kept exactly as sent.
_decoders = {
    kind: msgspec.json.Decoder(request, float_hook=Decimal) for kind, request in _REQUESTS.items()
}
_encode = msgspec.json.Encoder(decimal_format="number").encode


def hold_body(hold_id: str, hold: holds.Hold, now: dt.datetime) -> HoldBody:
    return HoldBody(
        hold_id=hold_id,
        user_id=hold.user_id,
        amount=format_amount(hold.amount),
        status=holds.status_at(hold, now),
        captured=format_amount(hold.captured),
        released=format_amount(hold.released),
        expires_at=hold.expires_at,
        reference=hold.reference,
    )


def _wallet(spent: Spent) -> WalletBody:
    w, held = spent.account.wallet, spent.account.held
    return WalletBody(
        user_id=spent.command.user_id,
        balance=format_amount(w.balance),
        total_credited=format_amount(w.total_credited),
        total_reversed=format_amount(w.total_reversed),
        total_debited=format_amount(w.total_debited),
        held=format_amount(held),
        available=format_amount(spent.account.available),
        event_count=w.event_count,
        updated_at=spent.at,
    )


def render(result: Spent | Refusal) -> tuple[int, bytes]:
    """The answer to a request once decided, applied or refused: stored with its
    Idempotency-Key, so that every repeat gets these very bytes."""
    if isinstance(result, Refusal):
        return result.status, error_body(result.code, result.detail)
    spent = result
    kind, wallet = spent.command.kind, _wallet(spent)
    if kind is Kind.DEBIT:
        return 201, _encode(DebitAnswer(event_body(spent.events[0]), wallet))
    if kind is Kind.CREDIT:
        return 201, _encode(CreditAnswer(event_body(spent.events[0]), wallet))
    assert spent.hold is not None
    hold = hold_body(spent.command.hold_id, spent.hold, spent.at)
    return (201 if kind is Kind.HOLD else 200), _encode(HoldAnswer(hold, wallet))


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise ApiError(400, "invalid_idempotency_key", "send an Idempotency-Key header")
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        )
    return key


def _amount(text: str | None) -> Any:
    if text is None:
        return None
    try:
        value = parse_amount(text)
    except AmountError as exc:
        raise ApiError(400, "invalid_amount", f"amount {exc}") from None
    if value <= 0:
        raise ApiError(400, "invalid_amount", "amount must be greater than zero")
    return value


def _reference(text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) > _REFERENCE_LIMIT:
        raise ApiError(400, "invalid_reference", "reference must be at most 255 characters")
    return text_param(text, "reference")


def _data(data: dict[str, Any] | None) -> msgspec.Raw | None:
    if data is None:
        return None
    try:
        body = _encode(data)  # its numbers were decoded as decimals: the same digits come out
    except RecursionError:
        raise ApiError(400, "invalid_data", "data nests too deep") from None
    if len(body) > DATA_LIMIT:
        raise ApiError(400, "invalid_data", f"data must be at most {DATA_LIMIT} bytes of JSON")
    if storable_json(body) is None:
        raise ApiError(
            400,
            "invalid_data",
            "data must be a JSON object without NUL characters or numbers beyond a decimal's range",
        )
    return msgspec.Raw(body)


def _decode(kind: Kind, body: bytes) -> Any:
    if not body.strip() and kind in (Kind.CAPTURE, Kind.VOID):
        body = b"{}"
    try:
        return _decoders[kind].decode(body)
    except msgspec.ValidationError as exc:
        text, _, at = str(exc).partition(" - at `")
        where = at.rstrip("`").removeprefix("$").lstrip(".")
        detail = f"{where}: {text}" if where else text
        if where == "amount" and "Expected `str" in text:
            detail = 'amount must be a JSON string holding a decimal, like "12.50"'
        raise ApiError(400, "invalid_body", detail) from None
    except msgspec.DecodeError:
        raise ApiError(400, "invalid_body", "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_body", "the body nests too deep") from None


def _fingerprint(kind: Kind, subject: str, body: bytes) -> bytes:
    """What makes two requests with one Idempotency-Key the same request: the operation, the
    wallet or hold it names, and the body byte for byte."""
    digest = hashlib.sha256()
    for part in (kind.value.encode(), subject.encode("utf-8", "surrogatepass"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


async def _command(request: web.Request, kind: Kind) -> Command:
    idempotency_key = _idempotency_key(request)
    api_key = request[API_KEY]
    body = await request.read()
    parsed = _decode(kind, body)
    if kind in (Kind.CAPTURE, Kind.VOID):
        hold_id = text_param(request.match_info["hold_id"], "hold_id")
        found = await read.hold(request.app[keys.POOL], hold_id)
        if found is None or found[0].owner != api_key:
            # Another key's hold is not this key's to see exist.
            raise ApiError(404, "hold_not_found", f"no hold {hold_id!r}")
        return Command(
            kind=kind,
            api_key=api_key,
            user_id=found[0].user_id,
            idempotency_key=idempotency_key,
            fingerprint=_fingerprint(kind, hold_id, body),
            amount=_amount(parsed.amount) if isinstance(parsed, CaptureRequest) else None,
            hold_id=hold_id,
        )
    user_id = text_param(request.match_info["user_id"], "user_id")
    fields: dict[str, Any] = {}
    if isinstance(parsed, HoldRequest):
        if not 1 <= parsed.expires_in <= holds.MAX_SECONDS:
            raise ApiError(
                400,
                "invalid_expires_in",
                f"expires_in must be a whole number of seconds from 1 to {holds.MAX_SECONDS}",
            )
        fields = {"expires_in": parsed.expires_in, "hold_id": "h_" + secrets.token_hex(12)}
    assert isinstance(parsed, AmountRequest | HoldRequest)
    return Command(
        kind=kind,
        api_key=api_key,
        user_id=user_id,
        idempotency_key=idempotency_key,
        fingerprint=_fingerprint(kind, user_id, body),
        amount=_amount(parsed.amount),
        reference=_reference(parsed.reference),
        data=_data(parsed.data),
        **fields,
    )


async def _spend(request: web.Request, kind: Kind) -> web.Response:
    try:
        command = await _command(request, kind)
    except ApiError as exc:
        outcome = "invalid" if exc.status == 400 else exc.code
        metrics.spend(kind.value, outcome)
        raise
    try:
        receipt = await request.app[keys.WRITER].spend(Spend(command, render))
    except Overloaded as exc:
        metrics.spend(kind.value, "overloaded")
        response = json_error(503, "overloaded", f"overloaded, retry later: {exc}")
        response.headers["Retry-After"] = "1"
        return response
    except Exception:
        metrics.spend(kind.value, "unavailable")
        raise
    refusal = receipt.refusal
    if receipt.replayed:
        outcome = "replayed"
    elif refusal is not None:
        outcome = "invalid" if refusal.status == 400 else refusal.code
    else:
        outcome = "applied"
    metrics.spend(kind.value, outcome)
    if not receipt.body and refusal is not None:  # a refusal of the key itself: not stored
        return json_error(refusal.status, refusal.code, refusal.detail)
    response = json_body(receipt.status, receipt.body)
    if receipt.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@requires("spend")
async def post_debit(request: web.Request) -> web.Response:
    return await _spend(request, Kind.DEBIT)


@requires("spend")
async def post_credit(request: web.Request) -> web.Response:
    return await _spend(request, Kind.CREDIT)


@requires("spend")
async def post_hold(request: web.Request) -> web.Response:
    return await _spend(request, Kind.HOLD)


@requires("spend")
async def post_capture(request: web.Request) -> web.Response:
    return await _spend(request, Kind.CAPTURE)


@requires("spend")
async def post_void(request: web.Request) -> web.Response:
    return await _spend(request, Kind.VOID)


@requires("read")
async def get_hold(request: web.Request) -> web.Response:
    hold_id = text_param(request.match_info["hold_id"], "hold_id")
    found = await read.hold(request.app[keys.POOL], hold_id)
    if found is None:
        raise ApiError(404, "hold_not_found", f"no hold {hold_id!r}")
    return json_body(200, _encode(hold_body(hold_id, *found)))


_KEY = Param(
    "Idempotency-Key",
    "header",
    "1 to 255 printable ASCII characters; a repeat of the same request with the same key gets the"
    " first answer again, byte for byte; another request with the same key gets 422",
    {"type": "string", "pattern": "^[\\x20-\\x7e]{1,255}$"},
    required=True,
)
_USER = Param("user_id", "path", "the user's id as the walls send it")
_HOLD = Param("hold_id", "path", "the hold's id, as placing it answered")
_SPENT = {
    409: "insufficient_funds: the amount is more than available; nothing recorded",
    422: "idempotency_key_reused: the key was used with another request; nothing changed",
}
_HOLD_ENDED = {
    409: "hold_not_held: the hold was captured, voided or has expired; nothing recorded",
    422: _SPENT[422],
}

WRITES = (
    Operation(
        "/v1/wallets/{user_id}/debits",
        post_debit,
        "Debit a wallet: never below zero available",
        DebitAnswer,
        (_USER, _KEY),
        method="post",
        body=AmountRequest,
        status=201,
        errors=_SPENT,
    ),
    Operation(
        "/v1/wallets/{user_id}/credits",
        post_credit,
        "Credit a wallet: a grant, or the refund of a cancelled order",
        CreditAnswer,
        (_USER, _KEY),
        method="post",
        body=AmountRequest,
        status=201,
        errors={422: _SPENT[422]},
    ),
    Operation(
        "/v1/wallets/{user_id}/holds",
        post_hold,
        "Set an amount aside until it is captured, voided or expires",
        HoldAnswer,
        (_USER, _KEY),
        method="post",
        body=HoldRequest,
        status=201,
        errors=_SPENT,
    ),
    Operation(
        "/v1/holds/{hold_id}/capture",
        post_capture,
        "Debit the whole hold or part of it; the rest is released",
        HoldAnswer,
        (_HOLD, _KEY),
        method="post",
        body=CaptureRequest,
        errors=_HOLD_ENDED,
        body_required=False,
    ),
    Operation(
        "/v1/holds/{hold_id}/void",
        post_void,
        "Release a hold",
        HoldAnswer,
        (_HOLD, _KEY),
        method="post",
        body=VoidRequest,
        errors=_HOLD_ENDED,
        body_required=False,
    ),
    Operation("/v1/holds/{hold_id}", get_hold, "A hold", HoldBody, (_HOLD,)),
)
