"""Holds, two-phase spending like a card authorisation, as a pure fold over their events.

A hold sets part of a user's balance aside for a while. `hold_placed` creates it, and it ends
exactly once: `hold_captured` debits the captured part and releases the rest, `hold_released`
gives it all back (voided by the service that placed it, or expired). A hold is *live* while it
is `held` and its `expires_at` has not come: live holds make up the wallet's `held`, and
`available` = `balance` - `held`. A hold stops being live at `expires_at` exactly, whatever has
been recorded: its release event (written by the expiry sweep) follows, and changes no total.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import msgspec

from .amounts import EXACT, ZERO
from .events import EventType, Recorded

HELD, CAPTURED, VOIDED, EXPIRED = "held", "captured", "voided", "expired"
STATUSES = (HELD, CAPTURED, VOIDED, EXPIRED)
EVENTS = frozenset({EventType.HOLD_PLACED, EventType.HOLD_CAPTURED, EventType.HOLD_RELEASED})
MAX_SECONDS = 604_800  # a hold lasts at most a week
DEFAULT_SECONDS = 900

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Hold(msgspec.Struct, frozen=True):
    owner: str = ""  # the API key that placed it: only that key may capture or void it
    user_id: str = ""
    amount: Decimal = ZERO
    status: str = HELD
    captured: Decimal = ZERO
    released: Decimal = ZERO
    expires_at: dt.datetime = _EPOCH
    reference: str | None = None


def hold_id(event: Recorded) -> str | None:
    """The hold a hold event is about; None for any other event."""
    return str(event.data["hold_id"]) if event.type in EVENTS else None


def closing_key(hold: str) -> str:
    """The idempotency key of the one event that ends a hold: the events table's unique key then
    lets no second capture, void or expiry in, whatever the projection says."""
    return f"hold:{hold}:closed"


def timestamp(moment: dt.datetime) -> str:
    """How an event's data holds an instant: UTC, microseconds, ISO 8601."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def apply(hold: Hold | None, event: Recorded) -> Hold:
    """The hold after one of its events (in position order)."""
    data = event.data
    if event.type is EventType.HOLD_PLACED:
        reference = data.get("reference")
        return Hold(
            owner=event.provider,
            user_id=event.user_id,
            amount=event.amount,
            expires_at=dt.datetime.fromisoformat(str(data["expires_at"])),
            reference=None if reference is None else str(reference),
        )
    current = hold or Hold(owner=event.provider, user_id=event.user_id)
    if event.type is EventType.HOLD_CAPTURED:
        return msgspec.structs.replace(
            current, status=CAPTURED, captured=event.amount, released=Decimal(data["released"])
        )
    return msgspec.structs.replace(current, status=str(data["reason"]), released=event.amount)


def live(hold: Hold, now: dt.datetime) -> bool:
    return hold.status == HELD and now < hold.expires_at


def status_at(hold: Hold, now: dt.datetime) -> str:
    """The hold's status as a reader sees it at `now`: past `expires_at`, a hold still `held`
    is `expired` whether or not its release is recorded yet."""
    return EXPIRED if hold.status == HELD and now >= hold.expires_at else hold.status


def rest(hold: Hold, captured: Decimal) -> Decimal:
    return EXACT.subtract(hold.amount, captured)
