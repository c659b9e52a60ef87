"""service/domain/spending.py and holds.py as pure functions: any sequence of commands decided in
order, with the clock moving between them, never takes `available` below zero, the fold of the
events it produced is the account the decisions carried, and every hold ends at most once."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain import holds, spending, wallet
from service.domain.amounts import ZERO
from service.domain.events import EventType, Postback
from service.domain.spending import Account, Command, Decision, Kind, Refusal

START = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
KEY = "shop"
USER = "u1"


def cents(n: int) -> Decimal:
    return Decimal(n).scaleb(-2)


def live_sum(states: dict[str, holds.Hold], now: dt.datetime) -> Decimal:
    """What the write path reads as `held`: the sum of the holds live at `now`."""
    return sum((h.amount for h in states.values() if holds.live(h, now)), ZERO)


# Debits and holds twice as likely as the rest.
KINDS: tuple[Kind, ...] = (Kind.CREDIT, Kind.DEBIT, Kind.DEBIT, Kind.HOLD, Kind.HOLD)
KINDS += (Kind.CAPTURE, Kind.VOID, Kind.EXPIRE)

# A command: its kind, an amount in cents, which known hold it names, how long a hold lasts, and
# seconds the clock moves before it is decided.
step = st.tuples(
    st.sampled_from(KINDS),
    st.integers(min_value=1, max_value=5_000),
    st.integers(min_value=0, max_value=20),
    st.sampled_from([None, 5, 30, 900]),
    st.sampled_from([0, 0, 0, 1, 10, 60]),
    st.booleans(),  # a capture names an amount (else: the whole hold)
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=40))
def test_any_sequence_keeps_available_and_the_fold_in_step(steps: list[Any]) -> None:
    now = START
    account = Account()
    events: list[Postback] = []
    states: dict[str, holds.Hold] = {}  # every hold, folded from its events by holds.apply
    closings: dict[str, int] = {}
    for i, (kind, amount_cents, which, expires_in, wait, part) in enumerate(steps):
        now += dt.timedelta(seconds=wait)
        # The write path reads `held` afresh under the lock: the holds live at `now`.
        account = Account(account.wallet, live_sum(states, now))
        ids = sorted(states)
        hold_id = ids[which % len(ids)] if ids and kind in (Kind.CAPTURE, Kind.VOID) else ""
        if kind is Kind.EXPIRE and ids:
            hold_id = ids[which % len(ids)]
        if kind is Kind.HOLD:
            hold_id = f"h{i}"
        amount: Decimal | None = cents(amount_cents)
        if kind is Kind.CAPTURE and hold_id:
            amount = min(cents(amount_cents), states[hold_id].amount) if part else None
        command = Command(
            kind=kind,
            api_key=KEY,
            user_id=USER,
            idempotency_key=None if kind is Kind.EXPIRE else f"k{i}",
            amount=None if kind in (Kind.VOID, Kind.EXPIRE) else amount,
            hold_id=hold_id,
            expires_in=expires_in or holds.DEFAULT_SECONDS,
        )
        before = states.get(hold_id)
        decided = spending.decide(command, account, before, now)

        if not isinstance(decided, Decision):
            if kind in (Kind.DEBIT, Kind.HOLD):
                assert isinstance(decided, Refusal) and decided.code == "insufficient_funds"
                assert command.amount is not None and command.amount > account.available
            elif kind is Kind.CREDIT:
                raise AssertionError(f"a credit was refused: {decided}")
            elif before is not None:
                # Only a hold that is no longer live refuses (or, for an expiry, has nothing
                # left to do when it ended or has not expired yet).
                if kind is Kind.EXPIRE:
                    assert before.status != holds.HELD or now < before.expires_at
                else:
                    assert not holds.live(before, now)
            continue

        assert len(decided.events) == 1
        event = decided.events[0]
        events.append(event)
        if event.type in holds.EVENTS:
            states[hold_id] = holds.apply(before, event)
            assert decided.hold == states[hold_id]
            if event.type is not EventType.HOLD_PLACED:
                closings[hold_id] = closings.get(hold_id, 0) + 1
                assert before is not None and before.status == holds.HELD
                assert states[hold_id].status != holds.HELD
        account = decided.account

        assert account.available >= 0
        assert account.held == live_sum(states, now)
        assert wallet.fold(events) == account.wallet
        assert wallet.fold(reversed(events)) == account.wallet  # order-free

    # Each hold ended at most once, and only by one closing event.
    assert all(n == 1 for n in closings.values())
    for hold_id, hold in states.items():
        closed = [e for e in events if e.key == holds.closing_key(hold_id)]
        assert len(closed) == (0 if hold.status == holds.HELD else 1)
        if hold.status == holds.CAPTURED:
            assert hold.captured + hold.released == hold.amount
        elif hold.status != holds.HELD:
            assert (hold.captured, hold.released) == (ZERO, hold.amount)
    debited = sum((e.amount for e in events if e.type is EventType.DEBITED), ZERO)
    captured = sum((e.amount for e in events if e.type is EventType.HOLD_CAPTURED), ZERO)
    assert account.wallet.total_debited == debited + captured


# holds.py, one function at a time.

PLACED = Postback(
    provider=KEY,
    key="request:k1",
    type=EventType.HOLD_PLACED,
    user_id=USER,
    amount=Decimal("10.50"),
    provider_ref="h1",
    data={"hold_id": "h1", "expires_at": "2026-01-01T12:15:00.000000Z", "reference": "cart"},
)
EXPIRES = dt.datetime(2026, 1, 1, 12, 15, tzinfo=dt.UTC)


def closing(kind: EventType, amount: str, **data: str) -> Postback:
    return Postback(
        provider=KEY,
        key=holds.closing_key("h1"),
        type=kind,
        user_id=USER,
        amount=Decimal(amount),
        provider_ref="h1",
        data={"hold_id": "h1", **data},
    )


def test_apply_placed() -> None:
    hold = holds.apply(None, PLACED)
    assert hold == holds.Hold(
        owner=KEY,
        user_id=USER,
        amount=Decimal("10.50"),
        status=holds.HELD,
        expires_at=EXPIRES,
        reference="cart",
    )
    assert holds.hold_id(PLACED) == "h1"


def test_apply_captured_keeps_what_was_captured_and_released() -> None:
    hold = holds.apply(
        holds.apply(None, PLACED), closing(EventType.HOLD_CAPTURED, "4.25", released="6.25")
    )
    assert (hold.status, hold.captured, hold.released) == (
        holds.CAPTURED,
        Decimal("4.25"),
        Decimal("6.25"),
    )
    assert (hold.amount, hold.owner, hold.expires_at) == (Decimal("10.50"), KEY, EXPIRES)


@pytest.mark.parametrize("reason", [holds.VOIDED, holds.EXPIRED])
def test_apply_released(reason: str) -> None:
    hold = holds.apply(
        holds.apply(None, PLACED), closing(EventType.HOLD_RELEASED, "10.50", reason=reason)
    )
    assert (hold.status, hold.captured, hold.released) == (reason, ZERO, Decimal("10.50"))


def test_status_at_expires_at_exactly_is_expired() -> None:
    hold = holds.apply(None, PLACED)
    tick = dt.timedelta(microseconds=1)
    assert holds.status_at(hold, EXPIRES - tick) == holds.HELD
    assert holds.live(hold, EXPIRES - tick)
    assert holds.status_at(hold, EXPIRES) == holds.EXPIRED
    assert not holds.live(hold, EXPIRES)
    # An ended hold keeps its status, before or after its expiry.
    voided = msgspec.structs.replace(hold, status=holds.VOIDED)
    assert holds.status_at(voided, EXPIRES - tick) == holds.VOIDED
    assert holds.status_at(voided, EXPIRES + tick) == holds.VOIDED


def test_decide_at_expires_at_exactly() -> None:
    hold = holds.apply(None, PLACED)
    account = Account(wallet.Wallet(balance=Decimal("20")), Decimal("10.50"))
    tick = dt.timedelta(microseconds=1)
    capture = Command(
        kind=Kind.CAPTURE, api_key=KEY, user_id=USER, idempotency_key="c", hold_id="h1"
    )
    expire = Command(kind=Kind.EXPIRE, api_key=KEY, user_id=USER, hold_id="h1")
    assert isinstance(spending.decide(capture, account, hold, EXPIRES - tick), Decision)
    assert spending.decide(expire, account, hold, EXPIRES - tick) is None
    refused = spending.decide(capture, account, hold, EXPIRES)
    assert isinstance(refused, Refusal) and refused.code == "hold_not_held"
    # At expiry the hold no longer counts in `held`: releasing it changes no total.
    released = spending.decide(expire, Account(account.wallet, ZERO), hold, EXPIRES)
    assert isinstance(released, Decision)
    assert released.account == Account(wallet.Wallet(balance=Decimal("20"), event_count=1), ZERO)
    assert released.events[0].data["reason"] == holds.EXPIRED


def test_timestamp_round_trips_through_apply() -> None:
    moment = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)
    assert holds.timestamp(moment) == "2026-03-04T05:06:07.890123Z"
    assert dt.datetime.fromisoformat(holds.timestamp(moment)) == moment
