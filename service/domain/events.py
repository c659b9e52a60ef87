"""The ledger's own vocabulary: normalised postbacks, stored events, outcomes."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, Protocol

import msgspec


class EventType(StrEnum):
    CREDITED = "credited"
    REVERSED = "reversed"
    RECEIPT_STATUS_CHANGED = "receipt_status_changed"
    # Spending by internal services (domain/spending.py); their credits are CREDITED events.
    DEBITED = "debited"
    HOLD_PLACED = "hold_placed"
    HOLD_CAPTURED = "hold_captured"
    HOLD_RELEASED = "hold_released"


class Outcome(StrEnum):
    """What became of one postback; the label values of `ledger_postbacks_total`."""

    CREDITED = "credited"
    REVERSED = "reversed"
    STATUS_CHANGED = "status_changed"
    RECORDED = "recorded"  # new event that moves no balance: zero reward, test
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # same idempotency key, different user or amount: nothing applied
    IGNORED = "ignored"
    REJECTED = "rejected"  # authentication failed
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"  # the database did not answer: nothing recorded, 503
    SHED = "shed"  # refused at once, the writer's queue being full: nothing recorded, 503


# The key prefix of an event made by an internal service's request (domain/spending.py):
# `request:` and its Idempotency-Key. Walls' keys never take it, so such a credit pairs with no
# wall transaction.
REQUEST_PREFIX = "request:"

# Why authentication failed: the signature did not match, the URL token did not, the source
# address is not allowed, or the signature was already used with other values ("replay").
AuthReason = Literal["signature", "token", "source_ip", "replay"]

# The outcomes of a postback that appended an event.
NEW_EVENT = frozenset(
    {Outcome.CREDITED, Outcome.REVERSED, Outcome.STATUS_CHANGED, Outcome.RECORDED, Outcome.IGNORED}
)


class Recorded(Protocol):
    """What the pure folds read of an event: a stored `Event` or a normalised `Postback`."""

    @property
    def provider(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def type(self) -> EventType: ...
    @property
    def user_id(self) -> str: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def provider_ref(self) -> str: ...
    @property
    def test(self) -> bool: ...
    @property
    def data(self) -> dict[str, Any]: ...


class Signed(msgspec.Struct, frozen=True):
    """What a wall's signature vouched for, kept so that one signature authenticates one
    postback. Walls sign a plain concatenation of some fields, so characters moved across a
    field boundary keep the signature valid; the write path refuses a signature already seen
    with other values. Digests only: the signature itself is never stored."""

    signature: bytes  # sha256 of the signature as the wall sent it, in lowercase
    values: bytes  # sha256 of the signed fields' values, as a JSON array

    @classmethod
    def of(cls, signature: str, *values: str) -> Signed:
        return cls(
            hashlib.sha256(signature.lower().encode("utf-8", "replace")).digest(),
            hashlib.sha256(msgspec.json.encode(values)).digest(),
        )


class Postback(msgspec.Struct, frozen=True, kw_only=True):
    """A postback normalised by its provider module: everything the write path needs. The
    events of spending requests (domain/spending.py) take the same form."""

    provider: str
    # Unique per provider; the database's unique constraint on (provider, key) is what makes
    # every retry harmless.
    key: str
    type: EventType
    user_id: str
    amount: Decimal
    provider_ref: str
    test: bool = False
    data: dict[str, Any] = {}
    signed: Signed | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """An event as the log holds it."""

    position: int
    provider: str
    key: str
    type: EventType
    user_id: str
    amount: Decimal
    provider_ref: str
    test: bool
    data: dict[str, Any]
    recorded_at: dt.datetime
    hash: str = ""  # hex; chains the event to the previous one of its user
