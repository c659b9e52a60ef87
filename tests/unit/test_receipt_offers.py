"""The receipt-offer state machine (service/domain/receipt_offers.py), the wallet's view of receipt
events (service/domain/wallet.py), and AdGate Magic Receipts postbacks as
service/providers/adgate_receipts.py normalises and answers them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import settlement, wallet
from service.domain.events import EventType, Outcome, Postback
from service.domain.receipt_offers import (
    APPROVED,
    AWARD_PENDING,
    MANUAL_REVIEW,
    REJECTED,
    STATUSES,
    ReceiptOffer,
    apply,
    approved,
    offer_key,
)
from service.providers import adgate_receipts
from service.providers.base import Inbound, Invalid
from service.settings import Provider

NOT_APPROVED = (MANUAL_REVIEW, AWARD_PENDING, REJECTED)


def status_event(
    status: str,
    points: str = "0",
    *,
    event_id: str = "e1",
    offer: str = "uo-1",
    user: str = "user-1",
    upload: str = "up-1",
    offer_id: str = "of-1",
    provider: str = "adgate",
) -> Postback:
    return Postback(
        provider=provider,
        key=f"event:{event_id}",
        type=EventType.RECEIPT_STATUS_CHANGED,
        user_id=user,
        amount=Decimal(points),
        provider_ref=event_id,
        data={
            "upload_offer_id": offer,
            "status": status,
            "upload_id": upload,
            "offer_id": offer_id,
        },
    )


def replay(
    events: Iterable[Postback], start: ReceiptOffer | None = None
) -> tuple[ReceiptOffer, list[Outcome]]:
    state = start or ReceiptOffer()
    outcomes: list[Outcome] = []
    links: settlement.Links = {}
    for event in events:
        state, outcome = apply(state, event, settlement.move(links, event))
        outcomes.append(outcome)
    return state, outcomes


# --- offer_key and approved ----------------------------------------------------------------------


def test_offer_key_is_provider_and_upload_offer_id() -> None:
    assert offer_key(status_event(MANUAL_REVIEW, offer="9001", provider="adgate-2")) == (
        "adgate-2",
        "9001",
    )


def test_offer_key_is_text_even_for_a_numeric_id() -> None:
    event = msgspec.structs.replace(
        status_event(MANUAL_REVIEW), data={"upload_offer_id": 123, "status": MANUAL_REVIEW}
    )
    assert offer_key(event) == ("adgate", "123")


@pytest.mark.parametrize("type_", [EventType.CREDITED, EventType.REVERSED])
def test_offer_key_of_a_wallet_event_is_none(type_: EventType) -> None:
    event = msgspec.structs.replace(status_event(APPROVED, "5"), type=type_)
    assert offer_key(event) is None
    assert approved(event) is False


@pytest.mark.parametrize("status", STATUSES)
def test_approved_only_for_the_approved_status(status: str) -> None:
    assert approved(status_event(status, "1")) is (status == APPROVED)


# --- the state machine ---------------------------------------------------------------------------


def test_full_lifecycle() -> None:
    events = [
        status_event(MANUAL_REVIEW, event_id="e1"),
        status_event(AWARD_PENDING, event_id="e2"),
        status_event(APPROVED, "10.50", event_id="e3"),
        status_event(REJECTED, event_id="e4"),
    ]
    states = []
    state = ReceiptOffer()
    for event in events:
        state, _ = apply(state, event, wallet.alone(event))
        states.append(state.status)
    assert states == [MANUAL_REVIEW, AWARD_PENDING, APPROVED, APPROVED]
    final, outcomes = replay(events)
    assert outcomes == [
        Outcome.STATUS_CHANGED,
        Outcome.STATUS_CHANGED,
        Outcome.CREDITED,
        Outcome.IGNORED,
    ]
    assert final == ReceiptOffer(
        user_id="user-1",
        upload_id="up-1",
        offer_id="of-1",
        status=APPROVED,
        points_credited=Decimal("10.50"),
        approvals=1,
        event_count=4,
    )
    purse = wallet.fold(events)
    assert (purse.balance, purse.total_credited, purse.total_reversed, purse.event_count) == (
        Decimal("10.50"),
        Decimal("10.50"),
        Decimal(0),
        4,
    )


def test_two_approvals_credit_both() -> None:
    events = [
        status_event(APPROVED, "10", event_id="e1"),
        status_event(APPROVED, "5.5", event_id="e2"),
    ]
    final, outcomes = replay(events)
    assert outcomes == [Outcome.CREDITED, Outcome.CREDITED]
    assert (final.status, final.points_credited, final.approvals) == (
        APPROVED,
        Decimal("15.5"),
        2,
    )
    assert wallet.fold(events).balance == Decimal("15.5")


def test_rejected_then_review_then_approved() -> None:
    events = [
        status_event(REJECTED, event_id="e1"),
        status_event(MANUAL_REVIEW, event_id="e2"),
        status_event(APPROVED, "3", event_id="e3"),
    ]
    final, outcomes = replay(events)
    assert outcomes == [Outcome.STATUS_CHANGED, Outcome.STATUS_CHANGED, Outcome.CREDITED]
    assert (final.status, final.points_credited, final.approvals, final.event_count) == (
        APPROVED,
        Decimal(3),
        1,
        3,
    )


@pytest.mark.parametrize("before", NOT_APPROVED)
@pytest.mark.parametrize("after", NOT_APPROVED)
def test_any_status_may_follow_one_that_is_not_approved(before: str, after: str) -> None:
    final, outcomes = replay([status_event(before, event_id="e1"), status_event(after)])
    assert final.status == after
    assert outcomes == [Outcome.STATUS_CHANGED, Outcome.STATUS_CHANGED]
    assert final.points_credited == 0


@pytest.mark.parametrize("late", NOT_APPROVED)
def test_a_later_status_is_ignored_after_approved(late: str) -> None:
    approved_offer, _ = replay([status_event(APPROVED, "7.25", event_id="e1")])
    # Points on an ignored event change nothing either.
    late_event = status_event(late, "99", event_id="e2")
    after, outcome = apply(approved_offer, late_event, wallet.alone(late_event))
    assert outcome is Outcome.IGNORED
    assert after == msgspec.structs.replace(approved_offer, event_count=2)


def test_approved_without_points_is_a_status_change_not_a_credit() -> None:
    final, outcomes = replay([status_event(APPROVED, "0")])
    assert outcomes == [Outcome.STATUS_CHANGED]
    assert (final.status, final.points_credited, final.approvals) == (APPROVED, Decimal(0), 1)


def test_first_event_names_the_offer_and_later_ones_fill_only_gaps() -> None:
    first = status_event(MANUAL_REVIEW, event_id="e1", upload="", offer_id="of-1", user="a")
    second = status_event(APPROVED, "1", event_id="e2", upload="up-2", offer_id="of-2", user="b")
    final, _ = replay([first, second])
    assert (final.user_id, final.upload_id, final.offer_id) == ("a", "up-2", "of-1")


def test_points_add_up_exactly() -> None:
    largest = "999999999999999.99999999999999999999"
    events = [status_event(APPROVED, largest, event_id=f"e{i}") for i in range(3)]
    final, _ = replay(events)
    assert str(final.points_credited) == "2999999999999999.99999999999999999997"
    assert wallet.fold(events).balance == final.points_credited


# --- the wallet's view of receipt events ---------------------------------------------------------


def test_effect_of_an_approval_is_its_points() -> None:
    assert wallet.fold([status_event(APPROVED, "12.30")]).balance == Decimal("12.30")
    assert wallet.outcome(wallet.alone(status_event(APPROVED, "12.30"))) is Outcome.CREDITED


@pytest.mark.parametrize("status", NOT_APPROVED)
def test_effect_of_other_statuses_is_zero_whatever_their_points(status: str) -> None:
    assert wallet.fold([status_event(status, "40")]).balance == 0
    assert wallet.outcome(wallet.alone(status_event(status, "40"))) is Outcome.RECORDED


def test_effect_of_a_test_approval_is_zero() -> None:
    event = msgspec.structs.replace(status_event(APPROVED, "5"), test=True)
    assert wallet.fold([event]).balance == 0


# --- the property: any order of distinct events ends the same -----------------------------------

event_spec = st.tuples(
    st.sampled_from(STATUSES),
    st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False, allow_infinity=False),
)


def distinct_in_order(events: Sequence[Postback]) -> list[Postback]:
    """What the log holds: each event key once, the first copy to arrive."""
    seen: set[str] = set()
    kept = []
    for event in events:
        if event.key not in seen:
            seen.add(event.key)
            kept.append(event)
    return kept


@given(
    specs=st.lists(event_spec, min_size=1, max_size=10),
    copies=st.lists(st.integers(min_value=0, max_value=9), max_size=10),
    data=st.data(),
)
def test_any_order_of_distinct_events_ends_the_same(
    specs: list[tuple[str, Decimal]], copies: list[int], data: Any
) -> None:
    events = [
        status_event(status, str(points), event_id=f"e{i}")
        for i, (status, points) in enumerate(specs)
    ]
    arrivals = events + [events[i % len(events)] for i in copies]
    order = distinct_in_order(data.draw(st.permutations(arrivals)))
    assert sorted(e.key for e in order) == sorted(e.key for e in events)

    final, outcomes = replay(order)
    approvals = [e for e in events if e.data["status"] == APPROVED]
    expected_points = sum((e.amount for e in approvals), Decimal(0))

    assert final.event_count == len(events)
    assert final.approvals == len(approvals)
    assert final.points_credited == expected_points
    if approvals:
        assert final.status == APPROVED
    else:
        assert final.status == order[-1].data["status"]
    assert wallet.fold(order).balance == expected_points
    assert wallet.fold(order).event_count == len(events)

    # Outcomes follow the order: after the first approval every other status is ignored.
    first = next((i for i, e in enumerate(order) if approved(e)), len(order))
    for i, (event, outcome) in enumerate(zip(order, outcomes, strict=True)):
        if approved(event):
            assert outcome is (Outcome.CREDITED if event.amount > 0 else Outcome.STATUS_CHANGED)
        elif i > first:
            assert outcome is Outcome.IGNORED
        else:
            assert outcome is Outcome.STATUS_CHANGED
    credited = sum((e.amount for e, o in zip(order, outcomes, strict=True) if o == "credited"), 0)
    assert credited == expected_points


# --- adgate_receipts.normalise -------------------------------------------------------------------

PROVIDER = Provider(name="adgate-app", protocol="adgate_receipts", url_token="t" * 20)


def query(
    status: str = APPROVED, points: str | None = "10.50", **extra: str
) -> list[tuple[str, str]]:
    pairs = [
        ("s1", "user-1"),
        ("shm_event_id", "777"),
        ("shm_upload_offer_id", "555"),
        ("shm_status", status),
    ]
    if points is not None:
        pairs.append(("points", points))
    pairs.extend(extra.items())
    return pairs


def inbound(
    pairs: Sequence[tuple[str, str]],
    body: bytes = b"",
    content_type: str = "application/json",
    method: str = "POST",
) -> Inbound:
    return Inbound(
        method=method, query=tuple(pairs), content_type=content_type, body=body, client_ip=None
    )


def normalise(pairs: Sequence[tuple[str, str]], body: bytes = b"") -> Postback:
    return adgate_receipts.normalise(PROVIDER, inbound(pairs, body))


def invalid(pairs: Sequence[tuple[str, str]], body: bytes = b"") -> str:
    with pytest.raises(Invalid) as info:
        normalise(pairs, body)
    assert type(info.value) is Invalid
    assert (info.value.status, info.value.outcome) == (400, Outcome.INVALID)
    assert "\n" not in info.value.detail
    return info.value.detail


def texts(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from texts(v)


def receipt(data: dict[str, Any]) -> Any:
    """The kept receipt JSON, decoded with exact numbers (it is kept as raw JSON text)."""
    raw = data["receipt"]
    assert isinstance(raw, msgspec.Raw)
    return json.loads(bytes(raw), parse_float=Decimal)


def storable(data: dict[str, Any]) -> None:
    """`data` can be written to a jsonb column: encodable, no NUL, no lone surrogate."""
    encoded = msgspec.json.encode(data)
    decoded = json.loads(encoded.decode("utf-8"), parse_float=Decimal)
    assert decoded == {k: receipt(data) if k == "receipt" else v for k, v in data.items()}
    for text in texts(decoded):
        assert "\x00" not in text
        text.encode("utf-8")


def test_every_macro_is_kept() -> None:
    extra = {
        "conversion_id": "4d63afe33875ceeec17dd7eab41b8590a",
        "payout": "0.35",
        "shm_upload_id": "1001",
        "shm_offer_id": "397622",
        "shm_offer_name": "Apples & Pears",
        "shm_reason_text": "Looks good",
        "shm_datetime": "2024-05-01 12:34:56",
        "state": "approved",
        "session_ip": "198.51.100.4",
        "country": "US",
    }
    postback = normalise(query(**extra))
    assert postback == Postback(
        provider="adgate-app",
        key="event:777",
        type=EventType.RECEIPT_STATUS_CHANGED,
        user_id="user-1",
        amount=Decimal("10.50"),
        provider_ref="777",
        test=False,
        data={
            "upload_offer_id": "555",
            "status": APPROVED,
            "upload_id": "1001",
            "offer_id": "397622",
            "conversion_id": "4d63afe33875ceeec17dd7eab41b8590a",
            "payout": "0.35",
            "shm_offer_name": "Apples & Pears",
            "shm_reason_text": "Looks good",
            "shm_datetime": "2024-05-01 12:34:56",
            "state": "approved",
            "session_ip": "198.51.100.4",
            "country": "US",
            "conversion_state": "approved",
        },
    )
    assert offer_key(postback) == ("adgate-app", "555")
    assert str(postback.amount) == "10.50"


def test_minimal_postback_has_empty_upload_and_offer_ids() -> None:
    postback = normalise(query(MANUAL_REVIEW, None))
    assert postback.amount == 0
    assert postback.data == {
        "upload_offer_id": "555",
        "status": MANUAL_REVIEW,
        "upload_id": "",
        "offer_id": "",
    }


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("approved", APPROVED),
        ("Approved", APPROVED),
        ("manual_review", MANUAL_REVIEW),
        ("Award_Pending", AWARD_PENDING),
        ("rejected", REJECTED),
    ],
)
def test_status_is_case_insensitive(sent: str, kept: str) -> None:
    assert normalise(query(sent, "1")).data["status"] == kept


def test_parameter_names_are_case_insensitive() -> None:
    pairs = [(name.upper(), value) for name, value in query()]
    postback = normalise(pairs)
    assert (postback.user_id, postback.key, postback.data["status"]) == (
        "user-1",
        "event:777",
        APPROVED,
    )


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (None, "approved"),
        ("", "approved"),
        ("approved", "approved"),
        ("Pending", "pending"),
        ("pending", "pending"),
        ("REJECTED", "rejected"),
        ("rejected", "rejected"),
    ],
)
def test_the_state_of_an_approval_is_kept_in_lowercase(sent: str | None, kept: str) -> None:
    extra = {} if sent is None else {"state": sent}
    data = normalise(query(APPROVED, "1", **extra)).data
    assert data["conversion_state"] == kept
    assert data.get("state") == (sent or None)


@pytest.mark.parametrize("state", ["paid", "approve", " pending", "rejected ", "1", "null"])
def test_unknown_state_of_an_approval_is_invalid_naming_the_states(state: str) -> None:
    detail = invalid(query(APPROVED, "1", state=state))
    assert "state" in detail
    assert all(name in detail for name in ("approved", "pending", "rejected"))


@pytest.mark.parametrize("status", NOT_APPROVED)
@pytest.mark.parametrize("state", ["rejected", "anything"])
def test_other_statuses_keep_state_as_it_came_and_read_nothing_from_it(
    status: str, state: str
) -> None:
    data = normalise(query(status, None, state=state)).data
    assert data["state"] == state
    assert "conversion_state" not in data


@pytest.mark.parametrize("status", ["PAID", "APPROVE", " APPROVED", "APPROVED ", "1", "null"])
def test_unknown_status_is_invalid(status: str) -> None:
    assert "shm_status" in invalid(query(status))


@pytest.mark.parametrize("missing", ["s1", "shm_event_id", "shm_upload_offer_id", "shm_status"])
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_missing_required_parameter_is_invalid_naming_it(missing: str, how: str) -> None:
    pairs = [(n, v) for n, v in query() if n != missing]
    if how == "empty":
        pairs.append((missing, ""))
    assert missing in invalid(pairs)


@pytest.mark.parametrize("points", [None, ""])
def test_approved_without_points_is_invalid(points: str | None) -> None:
    assert "points" in invalid(query(APPROVED, points))


@pytest.mark.parametrize("status", NOT_APPROVED)
@pytest.mark.parametrize("points", [None, ""])
def test_other_statuses_need_no_points(status: str, points: str | None) -> None:
    assert normalise(query(status, points)).amount == 0


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize(
    "points",
    ["-1", "-0.5", "NaN", "Infinity", "abc", "1e3", "1e999999", "1000000000000000", " 1", "1,5"],
)
def test_malformed_points_are_invalid_for_every_status(status: str, points: str) -> None:
    assert "points" in invalid(query(status, points))


@pytest.mark.parametrize(
    ("points", "amount"),
    [("0", "0"), ("25", "25"), ("0.01", "0.01"), ("999999999999999.99", "999999999999999.99")],
)
def test_points_are_exact(points: str, amount: str) -> None:
    value = normalise(query(APPROVED, points)).amount
    assert (value, str(value)) == (Decimal(amount), amount)


@pytest.mark.parametrize(
    "twice",
    [("s1", "user-2"), ("S1", "user-1"), ("shm_status", "REJECTED"), ("points", "1000")],
)
def test_a_parameter_given_twice_is_invalid(twice: tuple[str, str]) -> None:
    assert "more than once" in invalid([*query(), twice])


@pytest.mark.parametrize("name", ["s1", "shm_event_id", "shm_upload_offer_id"])
def test_overlong_ids_are_invalid(name: str) -> None:
    pairs = [(n, "x" * 256 if n == name else v) for n, v in query()]
    assert name in invalid(pairs)


@pytest.mark.parametrize("value", ["a\x00b", "\ud800"])
def test_parameters_the_database_cannot_store_are_invalid(value: str) -> None:
    invalid(query(shm_reason_text=value))


# --- the receipt body ----------------------------------------------------------------------------


def test_json_receipt_is_kept() -> None:
    body = {"receipt_images": ["https://img.example/1.jpg", "https://img.example/2.jpg"]}
    postback = normalise(query(), json.dumps(body).encode())
    assert receipt(postback.data) == body
    assert "receipt_text" not in postback.data
    storable(postback.data)


@pytest.mark.parametrize("body", [b"[1, 2.5, null, true]", b'"just a string"', b"42"])
def test_any_json_value_is_kept(body: bytes) -> None:
    postback = normalise(query(), body)
    assert receipt(postback.data) == json.loads(body, parse_float=Decimal)
    storable(postback.data)


@pytest.mark.parametrize(
    "body",
    [
        b'{"total": 12345678.123456789012345, "tax": 1.50}',
        b'{"a": 1e999, "b": -0.000000000000000000000001}',
        b"[100000000000000000000000000000000000001, 2.5E+3]",
    ],
)
def test_receipt_numbers_are_kept_as_the_exact_text_sent(body: bytes) -> None:
    postback = normalise(query(), body)
    assert bytes(postback.data["receipt"]) == body  # never decoded through float
    assert "receipt_text" not in postback.data
    storable(postback.data)


def test_receipt_is_kept_whatever_the_content_type() -> None:
    body = b'{"receipt_images": []}'
    postback = adgate_receipts.normalise(PROVIDER, inbound(query(), body, "text/plain"))
    assert receipt(postback.data) == {"receipt_images": []}


def test_no_body_keeps_no_receipt() -> None:
    data = normalise(query()).data
    assert not {"receipt", "receipt_text", "receipt_omitted_bytes"} & data.keys()


def test_receipt_at_the_limit_is_kept() -> None:
    prefix, suffix = b'{"u": "', b'"}'
    filler = b"x" * (adgate_receipts.RECEIPT_LIMIT - len(prefix) - len(suffix))
    body = prefix + filler + suffix
    assert len(body) == adgate_receipts.RECEIPT_LIMIT
    assert receipt(normalise(query(), body).data) == {"u": filler.decode()}


def test_receipt_over_the_limit_keeps_only_its_size() -> None:
    body = json.dumps({"u": "x" * 20_000}).encode()
    data = normalise(query(), body).data
    assert data["receipt_omitted_bytes"] == len(body)
    assert "receipt" not in data and "receipt_text" not in data


@pytest.mark.parametrize(
    "body",
    [
        b"receipt=https://img.example/1.jpg",
        b"{not json",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1e1001}',  # numeric takes an exponent up to 1000 (older servers)
        b'{"a": 0.1e-16383}',  # numeric keeps at most 16383 digits after the point
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_non_json_receipt_is_kept_as_text(body: bytes) -> None:
    data = normalise(query(), body).data
    assert data["receipt_text"] == body.decode()
    assert "receipt" not in data
    storable(data)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "\\u0000"}',
        b'{"\\u0000": 1}',
        b'{"a": "\\ud800"}',
        b'{"a": ["\\udfff x"]}',
    ],
)
def test_json_the_database_cannot_hold_is_kept_safely_as_text(body: bytes) -> None:
    data = normalise(query(), body).data
    assert "receipt" not in data
    assert data["receipt_text"] == body.decode()
    storable(data)


@pytest.mark.parametrize("body", [b"a\x00b", b"\xff\xfe receipt \xed\xa0\x80", b'{"a": "\x00"}'])
def test_undecodable_or_nul_bytes_are_kept_safely_as_text(body: bytes) -> None:
    data = normalise(query(), body).data
    text = data["receipt_text"]
    assert "\x00" not in text
    assert "receipt" in text or "a" in text
    storable(data)


# --- adgate_receipts.answer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome.CREDITED,
        Outcome.STATUS_CHANGED,
        Outcome.RECORDED,
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
        Outcome.IGNORED,
    ],
)
def test_recorded_duplicate_and_ignored_answer_200(outcome: Outcome) -> None:
    answer = adgate_receipts.answer(outcome, "recorded as event 1")
    assert (answer.status, answer.body, answer.content_type) == (200, "OK", "text/plain")


def test_refusals_answer_with_their_status() -> None:
    assert adgate_receipts.answer(Outcome.REJECTED, "invalid token").status == 403
    bad = adgate_receipts.answer(Outcome.INVALID, "missing parameter: s1")
    assert (bad.status, bad.body) == (400, "missing parameter: s1")
    assert adgate_receipts.answer(Outcome.UNAVAILABLE, "").status == 503


def test_the_token_is_required_and_never_a_parameter() -> None:
    assert adgate_receipts.REQUIRED_SETTINGS == ("url_token",)
    assert adgate_receipts.SECRET_PARAMS == frozenset()
