"""The wallet projection as a pure fold over events.

What each event moves is decided in `settlement.py` (credits and reversals pair per wall
transaction); this module adds those movements up. The SQL projection, `verify`, `rebuild` and
the property tests all agree with `fold`.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import msgspec

from . import settlement
from .amounts import EXACT, ZERO
from .events import Outcome, Recorded
from .settlement import Movement


class Wallet(msgspec.Struct, frozen=True):
    balance: Decimal = ZERO
    total_credited: Decimal = ZERO
    total_reversed: Decimal = ZERO
    total_debited: Decimal = ZERO
    event_count: int = 0


def apply(wallet: Wallet, movement: Movement) -> Wallet:
    """The wallet after one more event that moves it by `movement`."""
    change = EXACT.subtract(movement.credited, EXACT.add(movement.reversed, movement.debited))
    return Wallet(
        balance=EXACT.add(wallet.balance, change),
        total_credited=EXACT.add(wallet.total_credited, movement.credited),
        total_reversed=EXACT.add(wallet.total_reversed, movement.reversed),
        total_debited=EXACT.add(wallet.total_debited, movement.debited),
        event_count=wallet.event_count + 1,
    )


def fold(events: Iterable[Recorded]) -> Wallet:
    """One user's wallet from that user's events, in any order."""
    state = Wallet()
    links: dict[tuple[str, str], settlement.Settlement] = {}
    for event in events:
        state = apply(state, settlement.move(links, event))
    return state


def alone(event: Recorded) -> Movement:
    """What `event` moves as the first event of its wall transaction."""
    return settlement.move({}, event)


def outcome(movement: Movement) -> Outcome:
    """The outcome of recording an event that moves a wallet by `movement`."""
    delta = EXACT.subtract(movement.credited, movement.reversed)
    if delta > 0:
        return Outcome.CREDITED
    if delta < 0:
        return Outcome.REVERSED
    return Outcome.RECORDED
