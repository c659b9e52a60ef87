"""What the operator pages say about a postback, in words support can repeat to a user."""

from __future__ import annotations

from ..domain.events import EventType, Outcome

_OUTCOMES = {
    Outcome.CREDITED: "Credited",
    Outcome.REVERSED: "Reversed (chargeback)",
    Outcome.STATUS_CHANGED: "Receipt status changed",
    Outcome.RECORDED: "Recorded, moves no balance (zero amount or test)",
    Outcome.DUPLICATE: "Duplicate: already recorded, nothing more credited",
    Outcome.CONFLICT: "Conflict: this transaction was already recorded otherwise",
    Outcome.IGNORED: "Acknowledged, nothing to record",
    Outcome.REJECTED: "Refused: not authenticated",
    Outcome.INVALID: "Refused: malformed",
    Outcome.UNAVAILABLE: "Not recorded: database unavailable (the wall retries)",
    Outcome.SHED: "Not recorded: overloaded, shed (the wall retries)",
}

_REASONS = {
    "signature": "Bad signature",
    "token": "Wrong URL token",
    "source_ip": "Address not allowed",
    "replay": "Signature reused with other values",
}

_EVENTS = {
    EventType.CREDITED: "Credited",
    EventType.REVERSED: "Reversed",
    EventType.RECEIPT_STATUS_CHANGED: "Receipt status",
    EventType.DEBITED: "Debited",
    EventType.HOLD_PLACED: "Hold placed",
    EventType.HOLD_CAPTURED: "Hold captured",
    EventType.HOLD_RELEASED: "Hold released",
}

# Outcomes that credited nothing and that support should explain.
REFUSED = frozenset(
    {Outcome.REJECTED, Outcome.INVALID, Outcome.CONFLICT, Outcome.UNAVAILABLE, Outcome.SHED}
)


def outcome(value: str, reason: str | None = None) -> str:
    """A postback's outcome in words; for an authentication failure, why it failed."""
    if reason in _REASONS:
        return _REASONS[reason]
    try:
        return _OUTCOMES[Outcome(value)]
    except ValueError:
        return value  # a row written by a newer version: its own word is the best there is


def refused(value: str) -> bool:
    return value in {o.value for o in REFUSED}


def event(value: str) -> str:
    try:
        return _EVENTS[EventType(value)]
    except ValueError:
        return value


def sign(value: str) -> str:
    """How an event moves the balance: "+", "-" or "" (none, or not by itself)."""
    if value == EventType.CREDITED.value:
        return "+"
    if value in (EventType.REVERSED.value, EventType.DEBITED.value):
        return "-"
    return ""
