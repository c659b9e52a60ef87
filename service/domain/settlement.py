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

A receipt offer's approval (AdGate Magic Receipts) is a *conversion*: its link is its
`conversion_id` (`conversion:<id>`), or the event itself when it names none. Its `state`
(`data.conversion_state`) moves the money: `approved` credits the points when the conversion has
no credit yet, `pending` moves nothing yet, `rejected` takes back whatever the conversion
credited, once, whether it arrives before or after the credit. An approval recorded before the
state was read (no `conversion_state`: a legacy event) was credited on its own, and still counts
as it did: each adds its points to the conversion's credit. Every other event of the conversion
is recorded and moves nothing; only one naming another user than the conversion's is a conflict.

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
STATE = "conversion_state"  # data of a receipt approval: what its `state` does to the money
APPROVED, PENDING, REJECTED = "approved", "pending", "rejected"
STATES = (APPROVED, PENDING, REJECTED)


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
    """(provider, wall transaction) of a credit or reversal, (provider, conversion) of a receipt
    approval; None for events that pair with nothing (other receipt statuses, test events, an
    internal service's credits and spending)."""
    if event.test:
        return None
    if _conversion(event):
        conversion = event.data.get("conversion_id")
        return event.provider, f"conversion:{conversion}" if conversion else event.key
    if event.type not in (EventType.CREDITED, EventType.REVERSED):
        return None
    if event.key.startswith(REQUEST_PREFIX):
        return None
    return event.provider, str(event.data.get("link") or event.provider_ref)


def _conversion(event: Recorded) -> bool:
    """A receipt offer's approval: a conversion's event."""
    return event.type is EventType.RECEIPT_STATUS_CHANGED and event.data.get("status") == "APPROVED"


def click(event: Recorded) -> tuple[str, str] | None:
    """(provider, click id) of a credit or reversal that names its click; None otherwise."""
    value = event.data.get("uuid")
    if not value or _conversion(event) or link(event) is None:
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
    if _conversion(event):
        return _conversion_conflict(s, event)
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
    if _conversion(event):
        after = _convert(s, event)
    elif event.type is EventType.CREDITED:
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


def _conversion_conflict(s: Settlement, event: Recorded) -> str | None:
    """A conversion's events all name its user; nothing else about them is a conflict (a second
    approval or rejection is recorded and moves nothing). A legacy approval is history: it
    counts as it was credited."""
    if STATE not in event.data:
        return None
    users = {
        u for key, u in ((s.credit_key, s.credit_user), (s.reversal_key, s.reversal_user)) if key
    }
    if users - {event.user_id}:
        return "the conversion belongs to another user"
    return None


def _convert(s: Settlement, event: Recorded) -> Settlement:
    """The conversion after one of its approval events."""
    state = event.data.get(STATE)
    if state is None:  # legacy: each approval credited its points
        return msgspec.structs.replace(
            s,
            credit_key=s.credit_key or event.key,
            credit_user=s.credit_user if s.credit_key is not None else event.user_id,
            credited=EXACT.add(s.credited, event.amount),
        )
    if state == APPROVED and s.credit_key is None:
        return msgspec.structs.replace(
            s, credit_key=event.key, credit_user=event.user_id, credited=event.amount
        )
    if state == REJECTED and s.reversal_key is None:
        return msgspec.structs.replace(
            s,
            reversal_key=event.key,
            reversal_user=event.user_id,
            reversed=event.amount,
            reversal_whole=True,
        )
    return s


_SPENT = frozenset({EventType.DEBITED, EventType.HOLD_CAPTURED})


def unlinked(event: Recorded) -> Movement:
    """What an event that pairs with nothing moves: an internal service's credit credits, a debit
    and a hold's capture debit (placing and releasing a hold move only what is available, see
    domain/holds.py); the rest (receipt statuses other than an approval, test events) move
    nothing."""
    if event.test:
        return NONE
    if event.type is EventType.CREDITED:
        return Movement(credited=event.amount)
    if event.type in _SPENT:
        return Movement(debited=event.amount)
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
