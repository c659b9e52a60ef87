"""AdGate Media Magic Receipts postbacks (README, Walls; AdGate's Magic Receipts postback document).

The URL macros arrive as query parameters; the POST body (receipt image URLs, JSON) is kept with
the event. There is no signature: the `url_token` path segment and `allowed_ips` authenticate
(checked before this module is called). Each status update has its own `shm_event_id`, the
idempotency key; the receipt-offer state machine is in `domain/receipt_offers.py`. An APPROVED
event's `state` (approved when absent, pending or rejected) says what it does to the money, kept
as `data.conversion_state` (`domain/settlement.py`); other statuses keep `state` as it came.
"""

from __future__ import annotations

from typing import Any

from ..domain.amounts import AmountError, parse_amount
from ..domain.events import EventType, Outcome, Postback
from ..domain.receipt_offers import APPROVED, STATUSES
from ..domain.settlement import STATE, STATES
from ..settings import Provider
from .base import (
    Answer,
    Inbound,
    Invalid,
    bounded,
    named,
    plain_answer,
    require,
    storable_json,
    storable_params,
    storable_text,
)

SECRET_PARAMS: frozenset[str] = frozenset()  # the token is a path segment, never a parameter
IDENTITY = ("s1", "shm_event_id")
REQUIRED_SETTINGS: tuple[str, ...] = ("url_token",)
RECEIPT_LIMIT = 16384  # bytes of receipt body kept with an event
_REQUIRED = ("s1", "shm_event_id", "shm_upload_offer_id", "shm_status")
_EXTRA = (
    "conversion_id",
    "payout",
    "shm_offer_name",
    "shm_reason_text",
    "shm_datetime",
    "state",
    "session_ip",
    "country",
)


def normalise(provider: Provider, inbound: Inbound) -> Postback:
    found = named(inbound.query)
    require(found, _REQUIRED)
    status = found["shm_status"].upper()
    if status not in STATUSES:
        raise Invalid(f"shm_status must be one of {', '.join(STATUSES)}")
    state = None
    if status == APPROVED:
        require(found, ("points",))
        state = (found.get("state") or "approved").lower()
        if state not in STATES:
            raise Invalid(f"state must be one of {', '.join(STATES)}")
    try:
        points = parse_amount(found.get("points") or "0")
    except AmountError as exc:
        raise Invalid(f"points {exc}") from None
    event_id = bounded(found, "shm_event_id")
    data: dict[str, Any] = {
        "upload_offer_id": bounded(found, "shm_upload_offer_id"),
        "status": status,
        "upload_id": bounded(found, "shm_upload_id") if found.get("shm_upload_id") else "",
        "offer_id": bounded(found, "shm_offer_id") if found.get("shm_offer_id") else "",
    }
    data.update({name: bounded(found, name, 2000) for name in _EXTRA if found.get(name)})
    if state is not None:
        data[STATE] = state
    data.update(_receipt(inbound.body))
    return Postback(
        provider=provider.name,
        key=f"event:{event_id}",
        type=EventType.RECEIPT_STATUS_CHANGED,
        user_id=bounded(found, "s1"),
        amount=points,
        provider_ref=event_id,
        data=data,
    )


def _receipt(body: bytes) -> dict[str, Any]:
    """The receipt body as it can be kept: its JSON, else its text, within RECEIPT_LIMIT."""
    if not body:
        return {}
    if len(body) > RECEIPT_LIMIT:
        return {"receipt_omitted_bytes": len(body)}
    value = storable_json(body)  # raw JSON: its numbers reach jsonb with their exact text
    if value is not None:
        return {"receipt": value}
    return {"receipt_text": storable_text(body, RECEIPT_LIMIT)}


def answer(outcome: Outcome, detail: str) -> Answer:
    return plain_answer(outcome, detail)  # AdGate only needs a 200 for new, repeat, ignored


def loggable(inbound: Inbound) -> dict[str, str]:
    # Only the query: the body is the receipt, kept with the event itself.
    return storable_params(inbound.query)
