"""service/domain/wallet.py: the wallet projection as a pure fold over events."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.domain.events import EventType, Outcome, Postback
from service.domain.wallet import Wallet, apply, effect, fold, outcome

# Amounts the contract allows: 15 integer digits and 20 decimals, 35 significant digits.
LARGEST = "999999999999999.99999999999999999999"
MANY_DIGITS = "123456789012345.12345678901234567890"


def event(type_: EventType, amount: str, *, test: bool = False, user: str = "u1") -> Postback:
    return Postback(
        provider="medioot",
        key=f"{type_.value}:{amount}:{test}",
        type=type_,
        user_id=user,
        amount=Decimal(amount),
        provider_ref="t1",
        test=test,
    )


def credit(amount: str, *, test: bool = False) -> Postback:
    return event(EventType.CREDITED, amount, test=test)


def reversal(amount: str, *, test: bool = False) -> Postback:
    return event(EventType.REVERSED, amount, test=test)


# --- effect --------------------------------------------------------------------------------------


def test_effect_of_a_credit_is_its_amount() -> None:
    assert effect(credit("10.50")) == Decimal("10.50")


def test_effect_of_a_reversal_is_minus_its_amount() -> None:
    assert effect(reversal("10.50")) == Decimal("-10.50")


@pytest.mark.parametrize("type_", list(EventType))
def test_effect_of_a_zero_amount_is_zero(type_: EventType) -> None:
    assert effect(event(type_, "0.00")) == 0


@pytest.mark.parametrize("type_", list(EventType))
def test_effect_of_a_test_event_is_zero(type_: EventType) -> None:
    assert effect(event(type_, "10.50", test=True)) == 0


def test_effect_of_a_receipt_status_change_is_zero() -> None:
    assert effect(event(EventType.RECEIPT_STATUS_CHANGED, "500")) == 0


# --- apply ---------------------------------------------------------------------------------------


def test_apply_credit() -> None:
    wallet = apply(Wallet(), credit("10.50"))
    assert wallet == Wallet(
        balance=Decimal("10.50"),
        total_credited=Decimal("10.50"),
        total_reversed=Decimal(0),
        event_count=1,
    )


def test_apply_keeps_the_scale_of_the_amount() -> None:
    wallet = apply(Wallet(), credit("10.50"))
    assert str(wallet.balance) == "10.50"


def test_apply_reversal_after_credit() -> None:
    wallet = apply(apply(Wallet(), credit("10.50")), reversal("4.25"))
    assert wallet.balance == Decimal("6.25")
    assert wallet.total_credited == Decimal("10.50")
    assert wallet.total_reversed == Decimal("4.25")
    assert wallet.event_count == 2


def test_reversal_alone_makes_the_balance_negative() -> None:
    wallet = apply(Wallet(), reversal("3"))
    assert wallet.balance == Decimal("-3")
    assert wallet.total_credited == 0
    assert wallet.total_reversed == Decimal("3")


@pytest.mark.parametrize("movement", [credit("0"), reversal("0.00"), credit("5", test=True)])
def test_apply_counts_events_that_move_nothing(movement: Postback) -> None:
    wallet = apply(Wallet(), movement)
    assert wallet.balance == 0
    assert wallet.total_credited == 0
    assert wallet.total_reversed == 0
    assert wallet.event_count == 1


def test_apply_test_reversal_changes_no_total() -> None:
    start = Wallet(Decimal("7"), Decimal("7"), Decimal("0"), 1)
    wallet = apply(start, reversal("7", test=True))
    assert wallet == Wallet(Decimal("7"), Decimal("7"), Decimal("0"), 2)


def test_apply_does_not_change_its_input() -> None:
    start = Wallet()
    apply(start, credit("1"))
    assert start == Wallet()


def test_apply_is_exact_for_the_largest_amount() -> None:
    wallet = apply(Wallet(), credit(LARGEST))
    assert wallet.balance == Decimal(LARGEST)
    assert wallet.total_credited == Decimal(LARGEST)


def test_fold_is_exact_for_amounts_with_many_digits() -> None:
    # PostgreSQL's numeric column is exact; the fold that `verify` compares with it must be too.
    wallet = fold([credit(MANY_DIGITS), credit("0.00000000000000000001"), reversal(MANY_DIGITS)])
    assert wallet.balance == Decimal("0.00000000000000000001")
    assert wallet.total_credited == Decimal("123456789012345.12345678901234567891")


# --- fold ----------------------------------------------------------------------------------------


def test_fold_of_nothing_is_an_empty_wallet() -> None:
    assert fold([]) == Wallet()


def test_fold_continues_from_a_given_wallet() -> None:
    start = fold([credit("10")])
    assert fold([reversal("4")], start) == fold([credit("10"), reversal("4")])


def test_fold_from_an_empty_wallet() -> None:
    assert fold([credit("1")], Wallet()) == fold([credit("1")])


def test_fold_of_a_mixed_history() -> None:
    wallet = fold(
        [credit("10.50"), credit("2"), reversal("10.50"), credit("100", test=True), credit("0")]
    )
    assert wallet == Wallet(Decimal("2.00"), Decimal("12.50"), Decimal("10.50"), 5)


# --- outcome -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("movement", "expected"),
    [
        (credit("10.50"), Outcome.CREDITED),
        (reversal("10.50"), Outcome.REVERSED),
        (credit("0"), Outcome.RECORDED),
        (reversal("0.00"), Outcome.RECORDED),
        (credit("10.50", test=True), Outcome.RECORDED),
        (reversal("10.50", test=True), Outcome.RECORDED),
    ],
)
def test_outcome(movement: Postback, expected: Outcome) -> None:
    assert outcome(movement) is expected


# --- properties ----------------------------------------------------------------------------------


@st.composite
def amounts(draw: st.DrawFn) -> str:
    whole = draw(st.text("0123456789", min_size=1, max_size=15))
    fraction = draw(st.text("0123456789", min_size=0, max_size=20))
    return f"{whole}.{fraction}" if fraction else whole


movements = st.builds(
    event,
    st.sampled_from([EventType.CREDITED, EventType.REVERSED]),
    amounts(),
    test=st.booleans(),
)
histories = st.lists(movements, max_size=30)


def exact_sum(values: list[Decimal]) -> Decimal:
    with localcontext(prec=1000):
        return sum(values, Decimal(0))


def credits_of(events: list[Postback]) -> list[Decimal]:
    return [e.amount for e in events if e.type is EventType.CREDITED and not e.test]


def reversals_of(events: list[Postback]) -> list[Decimal]:
    return [e.amount for e in events if e.type is EventType.REVERSED and not e.test]


@given(histories)
def test_balance_is_credits_minus_reversals(events: list[Postback]) -> None:
    wallet = fold(events)
    with localcontext(prec=1000):
        expected = exact_sum(credits_of(events)) - exact_sum(reversals_of(events))
    assert wallet.balance == expected
    assert wallet.total_credited == exact_sum(credits_of(events))
    assert wallet.total_reversed == exact_sum(reversals_of(events))


@given(histories)
# Found by search: 28-digit rounding makes the totals and the balance drift apart.
@example([credit("999999999999999"), reversal("0.00000000000001")])
def test_totals_agree_with_balance(events: list[Postback]) -> None:
    wallet = fold(events)
    with localcontext(prec=1000):
        assert wallet.total_credited - wallet.total_reversed == wallet.balance
    assert wallet.total_credited >= 0
    assert wallet.total_reversed >= 0


@given(histories)
def test_event_count_is_the_number_of_events(events: list[Postback]) -> None:
    assert fold(events).event_count == len(events)


@given(histories.flatmap(lambda evs: st.tuples(st.just(evs), st.permutations(evs))))
# Found by search: with 28-digit rounding the order of additions changes the balance.
@example(
    (
        [reversal("123456789012345.6789"), credit("0.00000000000006"), credit("0.00000000000006")],
        [credit("0.00000000000006"), credit("0.00000000000006"), reversal("123456789012345.6789")],
    )
)
def test_fold_is_order_independent(pair: tuple[list[Postback], list[Postback]]) -> None:
    events, shuffled = pair
    assert fold(shuffled) == fold(events)


@given(histories, histories)
def test_fold_of_a_concatenation_continues_the_first_fold(
    first: list[Postback], second: list[Postback]
) -> None:
    assert fold(second, fold(first)) == fold(first + second)


# Amounts of up to 12 integer digits and 4 decimals keep every sum of 30 events within 28
# significant digits, so these check the fold's logic apart from any question of precision.
small_movements = st.builds(
    event,
    st.sampled_from([EventType.CREDITED, EventType.REVERSED]),
    st.decimals(min_value=0, max_value=10**12 - 1, places=4).map(str),
    test=st.booleans(),
)


@given(
    st.lists(small_movements, max_size=30).flatmap(
        lambda evs: st.tuples(st.just(evs), st.permutations(evs))
    )
)
def test_invariants_for_amounts_within_default_precision(
    pair: tuple[list[Postback], list[Postback]],
) -> None:
    events, shuffled = pair
    wallet = fold(events)
    credits, reversals = exact_sum(credits_of(events)), exact_sum(reversals_of(events))
    assert wallet.balance == credits - reversals
    assert wallet.total_credited == credits
    assert wallet.total_reversed == reversals
    assert wallet.total_credited - wallet.total_reversed == wallet.balance
    assert wallet.event_count == len(events)
    assert fold(shuffled) == wallet
