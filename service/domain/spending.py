"""Spending by internal services: debits, holds and internal credits, decided as a pure function.

The write path takes the user's lock, reads the wallet, its live holds and the hold a command
names, asks `decide`, and appends what it returns in the same transaction as postbacks. Rules:

- a debit or a hold takes at most what is `available` (`balance` - live holds): never below
  zero, and never at all from a wallet whose balance a chargeback made negative;
- an internal credit always applies (a grant, or a refund of a cancelled order);
- a hold is captured (whole or in part, the rest released) or voided only while it is live, and
  only by the API key that placed it; past `expires_at` the expiry sweep records its release;
- every request carries an Idempotency-Key, scoped to its API key: the first answer, an
  effect's or a refusal's, is stored with the request's fingerprint and given again to a
  repeat; the same key with another request is refused (`REUSED`) and changes nothing.

Events: `debited`, `credited`, `hold_placed` are keyed `request:<Idempotency-Key>` under the
API key's name, so the events table's unique key makes a second effect impossible even once the
stored answer has expired. A hold's capture, void or expiry is keyed by the hold
(`holds.closing_key`), so only one of them can ever be recorded.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum
from typing import Any

import msgspec

from . import holds, settlement, wallet
from .amounts import EXACT, ZERO, format_amount
from .events import REQUEST_PREFIX, EventType, Postback


class Kind(StrEnum):
    """What a command does; the `operation` label of `ledger_spend_requests_total`."""

    DEBIT = "debit"
    CREDIT = "credit"
    HOLD = "hold"
    CAPTURE = "capture"
    VOID = "void"
    EXPIRE = "expire"  # the expiry sweep: no caller, no idempotency key


class Command(msgspec.Struct, frozen=True, kw_only=True):
    kind: Kind
    api_key: str  # the caller's key name; for a hold's capture, void or expiry, its owner
    user_id: str
    idempotency_key: str | None = None
    fingerprint: bytes = b""  # of the request: method, path and body
    amount: Decimal | None = None  # a capture's None: the whole hold
    hold_id: str = ""
    expires_in: int = holds.DEFAULT_SECONDS
    reference: str | None = None
    data: msgspec.Raw | None = None  # the caller's JSON object, kept with the event as sent


class Refusal(msgspec.Struct, frozen=True):
    """A command that changes nothing, with the API's answer: status, error code, detail."""

    status: int
    code: str
    detail: str


REUSED = Refusal(
    422,
    "idempotency_key_reused",
    "this Idempotency-Key was already used with another request; use a new key",
)
EXPIRED_KEY = Refusal(
    422,
    "idempotency_key_reused",
    "this Idempotency-Key was already used, and its stored answer has expired; use a new key",
)


class Account(msgspec.Struct, frozen=True):
    """A wallet as the write path sees it under the user's lock: its totals and its live
    holds' sum."""

    wallet: wallet.Wallet = wallet.Wallet()
    held: Decimal = ZERO

    @property
    def available(self) -> Decimal:
        return EXACT.subtract(self.wallet.balance, self.held)


class Stored(msgspec.Struct, frozen=True):
    """What the idempotency store holds for a key: the first request's fingerprint and answer
    (`status` 0: none, though the key's event exists, so its answer expired)."""

    fingerprint: bytes
    status: int
    body: bytes


class Decision(msgspec.Struct, frozen=True):
    """What a command does: the events to append, and the account and hold after them."""

    events: list[Postback]
    account: Account
    hold: holds.Hold | None


def judge_key(command: Command, stored: Stored | None) -> Stored | Refusal | None:
    """An earlier answer to give again, a refusal, or None: the command is new."""
    if stored is None:
        return None
    if stored.status == 0:
        return EXPIRED_KEY
    return stored if stored.fingerprint == command.fingerprint else REUSED


def decide(
    command: Command, account: Account, hold: holds.Hold | None, now: dt.datetime
) -> Decision | Refusal | None:
    """What `command` does to `account` (and to `hold`, the hold it names) at `now`; None when
    there is nothing to do (an expiry of a hold that already ended)."""
    kind = command.kind
    if kind in (Kind.DEBIT, Kind.HOLD):
        assert command.amount is not None
        if command.amount > account.available:
            return Refusal(
                409,
                "insufficient_funds",
                f"amount {format_amount(command.amount)} is more than the"
                f" {format_amount(account.available)} available",
            )
    if kind is Kind.DEBIT:
        return _apply(account, None, _event(command, EventType.DEBITED, _extra(command)))
    if kind is Kind.CREDIT:
        return _apply(account, None, _event(command, EventType.CREDITED, _extra(command)))
    if kind is Kind.HOLD:
        expires_at = now + dt.timedelta(seconds=command.expires_in)
        data = {"hold_id": command.hold_id, "expires_at": holds.timestamp(expires_at)}
        event = _event(command, EventType.HOLD_PLACED, {**data, **_extra(command)})
        return _apply(account, None, event)
    if hold is None:
        return Refusal(404, "hold_not_found", f"no hold {command.hold_id!r}")
    if kind is Kind.EXPIRE:
        if hold.status != holds.HELD or now < hold.expires_at:
            return None
        return _apply(account, hold, _closing(command, hold, EventType.HOLD_RELEASED, hold.amount))
    if not holds.live(hold, now):
        return Refusal(
            409, "hold_not_held", f"hold {command.hold_id!r} is {holds.status_at(hold, now)}"
        )
    if kind is Kind.VOID:
        return _apply(account, hold, _closing(command, hold, EventType.HOLD_RELEASED, hold.amount))
    captured = hold.amount if command.amount is None else command.amount
    if captured > hold.amount:
        return Refusal(
            400,
            "invalid_amount",
            f"amount {format_amount(captured)} is more than the {format_amount(hold.amount)} held",
        )
    return _apply(account, hold, _closing(command, hold, EventType.HOLD_CAPTURED, captured))


def _extra(command: Command) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if command.reference is not None:
        extra["reference"] = command.reference
    if command.data is not None:
        extra["data"] = command.data
    return extra


def _event(command: Command, kind: EventType, data: dict[str, Any]) -> Postback:
    assert command.amount is not None and command.idempotency_key is not None
    return Postback(
        provider=command.api_key,
        key=REQUEST_PREFIX + command.idempotency_key,
        type=kind,
        user_id=command.user_id,
        amount=command.amount,
        provider_ref=command.hold_id or command.reference or "",
        data=data,
    )


def _closing(command: Command, hold: holds.Hold, kind: EventType, amount: Decimal) -> Postback:
    data: dict[str, Any] = {"hold_id": command.hold_id}
    if kind is EventType.HOLD_CAPTURED:
        data["released"] = format_amount(holds.rest(hold, amount))
    else:
        data["reason"] = holds.EXPIRED if command.kind is Kind.EXPIRE else holds.VOIDED
    return Postback(
        provider=hold.owner,
        key=holds.closing_key(command.hold_id),
        type=kind,
        user_id=hold.user_id,
        amount=amount,
        provider_ref=command.hold_id,
        data=data,
    )


def _apply(account: Account, hold: holds.Hold | None, event: Postback) -> Decision:
    after = wallet.apply(account.wallet, settlement.unlinked(event))
    held = account.held
    if event.type is EventType.HOLD_PLACED:
        held = EXACT.add(held, event.amount)
    elif hold is not None and event.data.get("reason") != holds.EXPIRED:
        # A live hold ends (an expired one counted no more already).
        held = EXACT.subtract(held, hold.amount)
    after_hold = holds.apply(hold, event) if event.type in holds.EVENTS else None
    return Decision([event], Account(after, held), after_hold)
