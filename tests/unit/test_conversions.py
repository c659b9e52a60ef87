"""AdGate conversions in service/domain/settlement.py: what an APPROVED receipt event's `state`
does to the money, per conversion, and what the receipt offer counts of it."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from service.domain import admission, receipt_offers, settlement, wallet
from service.domain.events import EventType, Outcome, Postback
from service.domain.settlement import NONE, Movement, Settlement, conflict, link, move, settle


def approval(
    state: str | None,
    points: str = "10",
    *,
    event_id: str = "e1",
    conversion: str | None = "c1",
    user: str = "u1",
    offer: str = "uo-1",
    status: str = "APPROVED",
) -> Postback:
    """A receipt status event; `state` None is a legacy approval (written before the state was
    read: no conversion_state)."""
    data: dict[str, str] = {"upload_offer_id": offer, "status": status}
    if conversion is not None:
        data["conversion_id"] = conversion
    if state is not None:
        data["conversion_state"] = state
    return Postback(
        provider="adgate",
        key=f"event:{event_id}",
        type=EventType.RECEIPT_STATUS_CHANGED,
        user_id=user,
        amount=Decimal(points),
        provider_ref=event_id,
        data=data,
    )


def moves(*events: Postback) -> list[Movement]:
    links: settlement.Links = {}
    return [move(links, e) for e in events]


def balance(*events: Postback) -> Decimal:
    return wallet.fold(events).balance


# --- links ---------------------------------------------------------------------------------------


def test_an_approval_links_to_its_conversion() -> None:
    assert link(approval("approved")) == ("adgate", "conversion:c1")
    assert link(approval(None)) == ("adgate", "conversion:c1")


def test_an_approval_without_conversion_id_is_a_conversion_of_its_own() -> None:
    assert link(approval("approved", conversion=None, event_id="e9")) == ("adgate", "event:e9")
    assert link(approval(None, conversion=None, event_id="e9")) == ("adgate", "event:e9")


@pytest.mark.parametrize("status", ["MANUAL_REVIEW", "AWARD_PENDING", "REJECTED"])
def test_other_statuses_link_to_nothing_and_move_nothing(status: str) -> None:
    event = approval("rejected", status=status)
    assert link(event) is None
    assert wallet.alone(event) == NONE


def test_a_test_approval_links_to_nothing() -> None:
    assert link(msgspec.structs.replace(approval("approved"), test=True)) is None


def test_an_approval_never_names_a_click() -> None:
    event = approval("approved")
    event = msgspec.structs.replace(event, data={**event.data, "uuid": "x"})
    assert settlement.click(event) is None


# --- each state ----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["approved", None])
def test_approved_and_legacy_credit_their_points(state: str | None) -> None:
    assert moves(approval(state, "10.50")) == [Movement(credited=Decimal("10.50"))]


def test_pending_records_and_credits_nothing() -> None:
    assert moves(approval("pending")) == [NONE]
    after, movement = settle(Settlement(), approval("pending"))
    assert (after, movement) == (Settlement(), NONE)


def test_rejected_with_nothing_to_reverse_moves_nothing() -> None:
    assert moves(approval("rejected")) == [NONE]
    after, _ = settle(Settlement(), approval("rejected", "3", event_id="e2"))
    assert (after.reversal_key, after.reversal_user, after.reversed, after.reversal_whole) == (
        "event:e2",
        "u1",
        Decimal(3),
        True,
    )


def test_approved_then_rejected_reverses_the_credit() -> None:
    events = (approval("approved", "10"), approval("rejected", "10", event_id="e2"))
    assert moves(*events) == [Movement(credited=Decimal(10)), Movement(reversed=Decimal(10))]
    assert balance(*events) == 0


def test_rejected_takes_back_the_whole_credit_whatever_points_it_names() -> None:
    events = (approval("approved", "10"), approval("rejected", "1", event_id="e2"))
    assert moves(*events)[1] == Movement(reversed=Decimal(10))
    assert balance(*events) == 0


def test_pending_then_approved_credits_once() -> None:
    events = (approval("pending", "10"), approval("approved", "10", event_id="e2"))
    assert moves(*events) == [NONE, Movement(credited=Decimal(10))]


def test_rejected_before_approved_nets_zero() -> None:
    events = (approval("rejected", "10"), approval("approved", "10", event_id="e2"))
    assert moves(*events) == [NONE, Movement(credited=Decimal(10), reversed=Decimal(10))]
    assert balance(*events) == 0
    assert wallet.fold(events) == wallet.fold(events[::-1])


def test_a_second_approved_credits_nothing() -> None:
    events = (approval("approved", "10"), approval("approved", "10", event_id="e2"))
    assert moves(*events) == [Movement(credited=Decimal(10)), NONE]
    links: settlement.Links = {}
    move(links, events[0])
    assert conflict(links[("adgate", "conversion:c1")], events[1]) is None


def test_a_second_rejected_reverses_nothing_more() -> None:
    events = (
        approval("approved", "10"),
        approval("rejected", "10", event_id="e2"),
        approval("rejected", "10", event_id="e3"),
        approval("approved", "10", event_id="e4"),
    )
    assert moves(*events)[2:] == [NONE, NONE]
    assert balance(*events) == 0


def test_approved_after_rejected_credits_nothing_again() -> None:
    events = (
        approval("approved", "10"),
        approval("rejected", "10", event_id="e2"),
        approval("approved", "10", event_id="e3"),
    )
    assert balance(*events) == 0


def test_conversions_are_apart() -> None:
    events = (
        approval("approved", "10"),
        approval("rejected", "10", event_id="e2", conversion="c2"),
        approval("approved", "4", event_id="e3", conversion=None),
        approval("approved", "5", event_id="e4", conversion=None),
    )
    assert balance(*events) == 19


# --- legacy approvals ----------------------------------------------------------------------------


def test_legacy_approvals_of_one_conversion_each_credit() -> None:
    events = (approval(None, "10"), approval(None, "5", event_id="e2"))
    assert moves(*events) == [Movement(credited=Decimal(10)), Movement(credited=Decimal(5))]
    links: settlement.Links = {}
    for e in events:
        move(links, e)
    assert links[("adgate", "conversion:c1")] == Settlement(
        credit_key="event:e1", credit_user="u1", credited=Decimal(15)
    )


def test_a_rejected_after_legacy_approvals_reverses_all_they_credited() -> None:
    events = (
        approval(None, "10"),
        approval(None, "5", event_id="e2"),
        approval("rejected", "10", event_id="e3"),
    )
    assert moves(*events)[2] == Movement(reversed=Decimal(15))
    assert balance(*events) == 0


def test_an_approved_after_a_legacy_approval_credits_nothing() -> None:
    events = (approval(None, "10"), approval("approved", "10", event_id="e2"))
    assert moves(*events)[1] == NONE


def test_legacy_approvals_are_history_never_conflicts() -> None:
    s, _ = settle(Settlement(), approval("approved", user="a"))
    assert conflict(s, approval(None, user="b", event_id="e2")) is None


# --- conflicts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["approved", "rejected", None])
@pytest.mark.parametrize("second", ["approved", "pending", "rejected"])
def test_another_user_on_a_conversion_is_a_conflict(first: str | None, second: str) -> None:
    s, _ = settle(Settlement(), approval(first, user="a"))
    assert conflict(s, approval(second, user="b", event_id="e2")) == (
        "the conversion belongs to another user"
    )
    assert conflict(s, approval(second, user="a", event_id="e2")) is None


def test_a_pending_conversion_belongs_to_nobody_yet() -> None:
    s, _ = settle(Settlement(), approval("pending", user="a"))
    assert conflict(s, approval("approved", user="b", event_id="e2")) is None


# --- the receipt offer ---------------------------------------------------------------------------


def offer_replay(*events: Postback) -> tuple[receipt_offers.ReceiptOffer, list[Outcome]]:
    links: settlement.Links = {}
    offer, outcomes = receipt_offers.ReceiptOffer(), []
    for e in events:
        offer, outcome = receipt_offers.apply(offer, e, move(links, e))
        outcomes.append(outcome)
    return offer, outcomes


def test_the_offer_counts_the_net_points_and_stays_approved() -> None:
    offer, outcomes = offer_replay(
        approval("pending", "10"),
        approval("approved", "10", event_id="e2"),
        approval("approved", "10", event_id="e3"),
        approval("rejected", "10", event_id="e4"),
        approval("rejected", "10", event_id="e5", status="REJECTED"),
    )
    assert outcomes == [
        Outcome.STATUS_CHANGED,
        Outcome.CREDITED,
        Outcome.STATUS_CHANGED,
        Outcome.REVERSED,
        Outcome.IGNORED,
    ]
    assert (offer.status, offer.points_credited, offer.approvals, offer.event_count) == (
        "APPROVED",
        Decimal(0),
        4,
        5,
    )


def test_the_offer_of_a_rejection_first_counts_nothing() -> None:
    offer, outcomes = offer_replay(
        approval("rejected", "10"), approval("approved", "10", event_id="e2")
    )
    assert outcomes == [Outcome.STATUS_CHANGED, Outcome.STATUS_CHANGED]
    assert (offer.status, offer.points_credited) == ("APPROVED", Decimal(0))


# --- admission within one batch ------------------------------------------------------------------


def test_an_approval_refused_for_its_offer_leaves_its_conversion_to_the_rest_of_the_batch() -> None:
    batch = [
        approval("pending", event_id="e1", user="owner"),
        approval("approved", event_id="e2", user="other"),  # the offer is owner's: refused
        approval("approved", event_id="e3", user="owner"),
    ]
    refused, _ = admission.admit([((e.provider, e.key), e) for e in batch], {}, {})
    assert refused == {("adgate", "event:e2"): admission.OTHER_OWNER}
