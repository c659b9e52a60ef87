"""The wallet projection as a pure fold over events."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Context, Decimal, Inexact
from typing import Any, Protocol

import msgspec

from .events import EventType, Outcome

ZERO = Decimal(0)
# Amounts carry up to 35 significant digits and sums grow from there; the default context
# (28 digits) would round them. This one is wide enough for any ledger and traps rounding.
EXACT = Context(prec=200, traps=[Inexact])


class Movement(Protocol):
    """The fields of an event (or a normalised postback) that decide its effect on a wallet."""

    @property
    def type(self) -> EventType: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def test(self) -> bool: ...
    @property
    def data(self) -> dict[str, Any]: ...


class Wallet(msgspec.Struct, frozen=True):
    balance: Decimal = ZERO
    total_credited: Decimal = ZERO
    total_reversed: Decimal = ZERO
    event_count: int = 0


def effect(event: Movement) -> Decimal:
    """The signed change an event makes to its user's balance."""
    if event.test:
        return ZERO
    if event.type is EventType.CREDITED:
        return event.amount
    if event.type is EventType.REVERSED:
        return EXACT.minus(event.amount)
    # A receipt offer's approval credits its points; its other statuses move nothing. This
    # depends on the event alone, never on the offer's state, so the fold stays order-free.
    if event.type is EventType.RECEIPT_STATUS_CHANGED and event.data.get("status") == "APPROVED":
        return event.amount
    return ZERO


def apply(wallet: Wallet, event: Movement) -> Wallet:
    delta = effect(event)
    return Wallet(
        balance=EXACT.add(wallet.balance, delta),
        total_credited=EXACT.add(wallet.total_credited, max(delta, ZERO)),
        total_reversed=EXACT.subtract(wallet.total_reversed, min(delta, ZERO)),
        event_count=wallet.event_count + 1,
    )


def fold(events: Iterable[Movement], wallet: Wallet | None = None) -> Wallet:
    state = wallet or Wallet()
    for event in events:
        state = apply(state, event)
    return state


def outcome(event: Movement) -> Outcome:
    """The outcome of recording `event` for the first time."""
    delta = effect(event)
    if delta > 0:
        return Outcome.CREDITED
    if delta < 0:
        return Outcome.REVERSED
    return Outcome.RECORDED
