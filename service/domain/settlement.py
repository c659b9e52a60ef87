"""Credits and their reversals, paired per wall transaction, as a pure fold.

A wall reverses a credit (a chargeback) by sending a reversal for the same transaction: the same
`transid` or `RewardId`. That transaction is the event's *link*. Some walls give a reversal a
transaction id of its own and name the credit's click instead (Medioot's `uuid`, kept as
`data.uuid`): when a reversal's own transaction has no credit, the write path links it to the
credited transaction of its click, and when a credit's own transaction has nothing yet, to a
transaction of its click that holds only a reversal (one that arrived first). It records that
link in the event (`data.link`), so that a replay pairs them the same way. The click is not
signed, so it only ever joins an event to a transaction that is missing its other half: a
captured URL resent with another click cannot move a chargeback away from its credit. Per link:

- at most one credit and one reversal are recorded; a second one is a conflict;
- a reversal takes back at most what its credit gave, and only from the credit's user: the pair
  moves the balance by `credit - min(reversal, credit)`, or by nothing when the reversal takes
  back the whole credit whatever amount it names (`data.reverses_whole_credit`: a wall whose
  signature does not cover the amount, so that a forged small reversal cannot pre-empt the
  real one);
- a reversal whose credit has not arrived moves nothing until the credit does, and one that
  names another user than the credit never pairs with it (it is a conflict when the credit is
  already there).

Each event moves the balance by the change it makes to its link's net effect, so the sum over a
link's events is the same in whatever order they arrive: the wallet fold stays order-free.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from decimal import Decimal

import msgspec

from .amounts import EXACT, ZERO
from .events import REQUEST_PREFIX, EventType, Recorded

WHOLE = "reverses_whole_credit"  # data flag of a reversal that takes back the whole credit


class Settlement(msgspec.Struct, frozen=True):
    """What one wall transaction has recorded: its credit and its reversal, each optional."""

    click: str | None = None
    credit_key: str | None = None
    credit_user: str = ""
    credited: Decimal = ZERO
    reversal_key: str | None = None
    reversal_user: str = ""
    reversed: Decimal = ZERO
    reversal_whole: bool = False


class Movement(msgspec.Struct, frozen=True):
    """What an event adds to its user's totals (balance = credited - reversed - debited)."""

    credited: Decimal = ZERO
    reversed: Decimal = ZERO
    debited: Decimal = ZERO


NONE = Movement()
Links = MutableMapping[tuple[str, str], Settlement]


def link(event: Recorded) -> tuple[str, str] | None:
    """(provider, wall transaction) of a credit or reversal; None for events that pair with
    nothing (receipt statuses, test events, an internal service's credits and spending)."""
    if event.test or event.type not in (EventType.CREDITED, EventType.REVERSED):
        return None
    if event.key.startswith(REQUEST_PREFIX):
        return None
    return event.provider, str(event.data.get("link") or event.provider_ref)


def click(event: Recorded) -> tuple[str, str] | None:
    """(provider, click id) of a credit or reversal that names its click; None otherwise."""
    value = event.data.get("uuid")
    if not value or link(event) is None:
        return None
    return event.provider, str(value)


def linked_by_click(
    event: Recorded, own: Settlement | None, clicked: tuple[str, Settlement] | None
) -> str | None:
    """The transaction of its click (`clicked`: its link and settlement) that `event` joins, or
    None: a reversal whose own transaction has no credit joins a credited one; a credit whose own
    transaction holds nothing joins one that holds only a reversal of the same user."""
    if clicked is None:
        return None
    other = clicked[1]
    if event.type is EventType.REVERSED:
        if own is not None and own.credit_key is not None:
            return None
        return clicked[0] if other.credit_key is not None else None
    if own is not None and (own.credit_key is not None or own.reversal_key is not None):
        return None
    lone = other.credit_key is None and other.reversal_key is not None
    return clicked[0] if lone and other.reversal_user == event.user_id else None


def _paired(s: Settlement) -> Movement:
    """The movement a link has made so far."""
    if s.credit_key is None:
        return NONE
    if s.reversal_key is None or s.reversal_user != s.credit_user:
        return Movement(credited=s.credited)
    taken = s.credited if s.reversal_whole else min(s.reversed, s.credited)
    return Movement(credited=s.credited, reversed=taken)


def conflict(s: Settlement, event: Recorded) -> str | None:
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


def settle(s: Settlement, event: Recorded) -> tuple[Settlement, Movement]:
    """The link after `event` (checked with `conflict` first) and what `event` moves."""
    named = click(event)
    if event.type is EventType.CREDITED:
        # The transaction's click is its credit's: a reversal that named one does not count.
        after = msgspec.structs.replace(
            s,
            click=named[1] if named else None,
            credit_key=event.key,
            credit_user=event.user_id,
            credited=event.amount,
        )
    else:
        # A lone reversal keeps its click, so that its credit can find it.
        lone_click = s.click or (named[1] if named else None)
        after = msgspec.structs.replace(
            s,
            click=s.click if s.credit_key is not None else lone_click,
            reversal_key=event.key,
            reversal_user=event.user_id,
            reversed=event.amount,
            reversal_whole=event.data.get(WHOLE) is True,
        )
    before, now = _paired(s), _paired(after)
    return after, Movement(
        credited=EXACT.subtract(now.credited, before.credited),
        reversed=EXACT.subtract(now.reversed, before.reversed),
    )


_SPENT = frozenset({EventType.DEBITED, EventType.HOLD_CAPTURED})


def unlinked(event: Recorded) -> Movement:
    """What an event that pairs with nothing moves: an internal service's credit credits, a debit
    and a hold's capture debit (placing and releasing a hold move only what is available, see
    domain/holds.py); a receipt offer's approval credits its points, whatever the offer's state
    (so the fold stays order-free); the rest move nothing."""
    if event.test:
        return NONE
    if event.type is EventType.CREDITED:
        return Movement(credited=event.amount)
    if event.type in _SPENT:
        return Movement(debited=event.amount)
    if event.type is not EventType.RECEIPT_STATUS_CHANGED:
        return NONE
    if event.data.get("status") == "APPROVED":
        return Movement(credited=event.amount)
    return NONE


def move(links: Links, event: Recorded) -> Movement:
    """Record `event` (already known not to conflict) in `links`; what it moves."""
    name = link(event)
    if name is None:
        return unlinked(event)
    current = links.get(name, Settlement())
    if conflict(current, event) is not None:
        return NONE  # only in a log written before such events were refused
    links[name], movement = settle(current, event)
    return movement
