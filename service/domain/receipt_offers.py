"""The receipt-offer state machine (AdGate Magic Receipts) as a pure fold.

A receipt offer moves between MANUAL_REVIEW, AWARD_PENDING, APPROVED and REJECTED in any order
until it is APPROVED, which is final: a later non-approval is recorded but ignored. What an
APPROVED event does to the money (its conversion's `state`: credit, nothing yet, or take back)
is decided in `settlement.py`; the offer counts what its events actually moved
(`points_credited`, net of what they took back). Events fold in log position order; the write
path hands out an offer's positions under that offer's lock, so the order it applied them in is
the order `verify` replays.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from .amounts import EXACT, ZERO
from .events import EventType, Outcome, Recorded
from .settlement import Movement

MANUAL_REVIEW = "MANUAL_REVIEW"
AWARD_PENDING = "AWARD_PENDING"
APPROVED = "APPROVED"
REJECTED = "REJECTED"
STATUSES = (MANUAL_REVIEW, AWARD_PENDING, APPROVED, REJECTED)


class ReceiptOffer(msgspec.Struct, frozen=True):
    user_id: str = ""
    upload_id: str = ""
    offer_id: str = ""
    status: str = ""
    points_credited: Decimal = ZERO
    approvals: int = 0
    event_count: int = 0


def offer_key(event: Recorded) -> tuple[str, str] | None:
    """(provider, upload offer id) of a receipt status event; None for any other event."""
    if event.type is not EventType.RECEIPT_STATUS_CHANGED:
        return None
    return event.provider, str(event.data["upload_offer_id"])


def approved(event: Recorded) -> bool:
    return event.type is EventType.RECEIPT_STATUS_CHANGED and event.data.get("status") == APPROVED


def apply(offer: ReceiptOffer, event: Recorded, movement: Movement) -> tuple[ReceiptOffer, Outcome]:
    """The offer after `event`, which moved its user's balance by `movement`
    (`settlement.move`), and the event's outcome."""
    status = str(event.data["status"])
    seen = msgspec.structs.replace(
        offer,
        user_id=offer.user_id or event.user_id,
        upload_id=offer.upload_id or str(event.data.get("upload_id") or ""),
        offer_id=offer.offer_id or str(event.data.get("offer_id") or ""),
        event_count=offer.event_count + 1,
    )
    if offer.status == APPROVED and status != APPROVED:
        return seen, Outcome.IGNORED
    if status != APPROVED:
        return msgspec.structs.replace(seen, status=status), Outcome.STATUS_CHANGED
    net = EXACT.subtract(movement.credited, movement.reversed)
    credited = msgspec.structs.replace(
        seen,
        status=APPROVED,
        points_credited=EXACT.add(offer.points_credited, net),
        approvals=offer.approvals + 1,
    )
    if net > 0:
        return credited, Outcome.CREDITED
    return credited, Outcome.REVERSED if net < 0 else Outcome.STATUS_CHANGED
