"""Credits and their reversals, paired per wall transaction, as a pure fold.

A wall reverses a credit (a chargeback) by sending a reversal for the same transaction: the same
`transid` or `RewardId`, or, on walls that give a reversal a transaction id of its own, the same
click (`uuid`). That transaction is the event's *link*. Per link:

- at most one credit and one reversal are recorded; a second one is a conflict;
- a reversal takes back at most what its credit gave, and only from the credit's user: the pair
  moves the balance by `credit - min(reversal, credit)`;
- a reversal whose credit has not arrived moves nothing until the credit does, and one that
  names another user than the credit never pairs with it (it is a conflict when the credit is
  already there).

Each event moves the balance by the change it makes to its link's net effect, so the sum over a
link's events is the same in whatever order they arrive: the wallet fold stays order-free.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from decimal import Decimal
from typing import Any, Protocol

import msgspec

from .amounts import EXACT, ZERO
from .events import EventType


class LinkedEvent(Protocol):
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


class Settlement(msgspec.Struct, frozen=True):
    """What one wall transaction has recorded: its credit and its reversal, each optional."""

    credit_key: str | None = None
    credit_user: str = ""
    credited: Decimal = ZERO
    reversal_key: str | None = None
    reversal_user: str = ""
    reversed: Decimal = ZERO


class Movement(msgspec.Struct, frozen=True):
    """What an event adds to its user's totals: credited and reversed (balance = their
    difference)."""

    credited: Decimal = ZERO
    reversed: Decimal = ZERO


NONE = Movement()


def link(event: LinkedEvent) -> tuple[str, str] | None:
    """(provider, wall transaction) of a credit or reversal; None for events that pair with
    nothing (receipt statuses, test events). The click `uuid` wins over the transaction id, so
    a reversal sent under a new transaction id still finds its credit."""
    if event.test or event.type not in (EventType.CREDITED, EventType.REVERSED):
        return None
    return event.provider, str(event.data.get("uuid") or event.provider_ref)


def _paired(s: Settlement) -> Movement:
    """The movement a link has made so far."""
    if s.credit_key is None:
        return NONE
    if s.reversal_key is None or s.reversal_user != s.credit_user:
        return Movement(credited=s.credited)
    return Movement(credited=s.credited, reversed=min(s.reversed, s.credited))


def conflict(s: Settlement, event: LinkedEvent) -> str | None:
    """Why `event` cannot be recorded against its link, or None. A retry of the event the link
    already holds is not a conflict here: the event's own idempotency key judges it."""
    if event.type is EventType.CREDITED:
        if s.credit_key is not None and s.credit_key != event.key:
            return "this transaction was already credited by another postback"
        return None
    if s.reversal_key is not None and s.reversal_key != event.key:
        return "this transaction was already reversed by another postback"
    if s.credit_key is not None and s.credit_user != event.user_id:
        return "the reversal names another user than the credit it reverses"
    return None


def settle(s: Settlement, event: LinkedEvent) -> tuple[Settlement, Movement]:
    """The link after `event` (checked with `conflict` first) and what `event` moves."""
    if event.type is EventType.CREDITED:
        after = msgspec.structs.replace(
            s, credit_key=event.key, credit_user=event.user_id, credited=event.amount
        )
    else:
        after = msgspec.structs.replace(
            s, reversal_key=event.key, reversal_user=event.user_id, reversed=event.amount
        )
    before, now = _paired(s), _paired(after)
    return after, Movement(
        credited=EXACT.subtract(now.credited, before.credited),
        reversed=EXACT.subtract(now.reversed, before.reversed),
    )


Links = MutableMapping[tuple[str, str], Settlement]


def unlinked(event: LinkedEvent) -> Movement:
    """What an event that pairs with nothing moves: a receipt offer's approval credits its
    points, whatever the offer's state (so the fold stays order-free); the rest move nothing."""
    if event.test or event.type is not EventType.RECEIPT_STATUS_CHANGED:
        return NONE
    if event.data.get("status") == "APPROVED":
        return Movement(credited=event.amount)
    return NONE


def move(links: Links, event: LinkedEvent) -> Movement:
    """Record `event` (already known not to conflict) in `links`; what it moves."""
    name = link(event)
    if name is None:
        return unlinked(event)
    current = links.get(name, Settlement())
    if conflict(current, event) is not None:
        return NONE  # only in a log written before such events were refused
    links[name], movement = settle(current, event)
    return movement
