"""The receipt-offer invariant through the one write path and real PostgreSQL: any order, any
batching (some batches concurrent), any number of duplicates of a receipt offer's status events
ends in the state the pure state machine gives, and APPROVED is final; and whatever the order of
a conversion's approvals (`state` approved, pending or rejected), it is credited at most once and
taken back at most once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.db.write import LogEntry, Receipt, Submission, append
from service.domain import receipt_offers, settlement, wallet
from service.domain.events import Outcome
from service.domain.receipt_offers import APPROVED, STATUSES
from service.providers import adgate_receipts
from service.providers.base import Inbound
from service.settings import Provider
from tests import helpers
from tests.helpers import unique

PROVIDER = Provider(name="adgate", protocol="adgate_receipts", url_token="t" * 20)


def submission(
    user: str, offer: str, event: str, status: str, points: str, **extra: str
) -> Submission:
    """One AdGate postback as the handler hands it to the write path."""
    pairs = (
        ("s1", user),
        ("shm_event_id", event),
        ("shm_upload_offer_id", offer),
        ("shm_upload_id", f"up-{offer}"),
        ("shm_offer_id", "397622"),
        ("shm_status", status),
        ("points", points),
        *extra.items(),
    )
    inbound = Inbound(method="POST", query=pairs, content_type="", body=b"", client_ip=None)
    postback = adgate_receipts.normalise(PROVIDER, inbound)
    log = LogEntry(
        request_id="property", provider="adgate", method="POST", client_ip=None, params=dict(pairs)
    )
    return Submission(log, adgate_receipts.answer, postback=postback)


def cents(value: int) -> str:
    return f"{value // 100}.{value % 100:02d}"


async def append_all(
    pool: asyncpg.Pool, batches: Sequence[Sequence[Submission]], together: Sequence[bool]
) -> list[tuple[Submission, Receipt]]:
    """Append `batches` in order; a batch flagged in `together` runs concurrently with the one
    before it."""
    groups: list[list[Sequence[Submission]]] = []
    for batch, concurrent in zip(batches, together, strict=True):
        if concurrent and groups:
            groups[-1].append(batch)
        else:
            groups.append([batch])
    done: list[tuple[Submission, Receipt]] = []
    for group in groups:
        results = await asyncio.gather(*(append(pool, b) for b in group))
        for batch, receipts in zip(group, results, strict=True):
            done.extend(zip(batch, receipts, strict=True))
    return done


event_spec = st.tuples(st.sampled_from(STATUSES), st.integers(min_value=0, max_value=100_000))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    specs=st.lists(event_spec, min_size=1, max_size=8),
    copies=st.lists(st.integers(min_value=0, max_value=7), max_size=10),
    cuts=st.lists(st.integers(min_value=1, max_value=17), max_size=6),
    data=st.data(),
)
async def test_any_order_and_batching_of_an_offers_events_ends_the_same(
    pool: asyncpg.Pool,
    specs: list[tuple[str, int]],
    copies: list[int],
    cuts: list[int],
    data: Any,
) -> None:
    user, offer = unique(), unique("uo")
    distinct = [
        submission(user, offer, unique("ev"), status, cents(points)) for status, points in specs
    ]
    arrivals = data.draw(
        st.permutations(distinct + [distinct[i % len(distinct)] for i in copies]), label="order"
    )
    bounds = sorted({c for c in cuts if c < len(arrivals)})
    batches = [arrivals[a:b] for a, b in zip([0, *bounds], [*bounds, len(arrivals)], strict=True)]
    together = data.draw(
        st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)), label="concurrent"
    )

    done = await append_all(pool, batches, together)

    approvals = [s for s in distinct if s.postback and receipt_offers.approved(s.postback)]
    expected_points = sum((s.postback.amount for s in approvals if s.postback), Decimal(0))
    outcomes = [r.outcome for _, r in done]
    assert Outcome.CONFLICT not in outcomes
    assert outcomes.count(Outcome.DUPLICATE) == len(arrivals) - len(distinct)
    assert outcomes.count(Outcome.CREDITED) == sum(
        1 for s in approvals if s.postback and s.postback.amount > 0
    )
    assert {r.answer.status for _, r in done} == {200}

    row = await pool.fetchrow(
        "SELECT * FROM receipt_offers WHERE provider = 'adgate' AND upload_offer_id = $1", offer
    )
    assert row is not None
    assert (row["user_id"], row["upload_id"], row["offer_id"]) == (user, f"up-{offer}", "397622")
    assert (row["points_credited"], row["approvals"], row["event_count"]) == (
        expected_points,
        len(approvals),
        len(distinct),
    )
    purse = await pool.fetchrow("SELECT * FROM wallets WHERE user_id = $1", user)
    assert purse is not None
    assert (purse["balance"], purse["total_credited"], purse["event_count"]) == (
        expected_points,
        expected_points,
        len(distinct),
    )
    assert purse["balance"] == row["points_credited"]

    # The order the write path applied the events in is their position order: replaying the
    # offer's log gives the stored projection and the very outcomes that were answered.
    events = await pool.fetch(
        "SELECT key, position, data->>'status' AS status FROM events"
        " WHERE provider = 'adgate' AND data->>'upload_offer_id' = $1 ORDER BY position",
        offer,
    )
    by_key = {s.postback.key: s.postback for s in distinct if s.postback}
    history = [by_key[e["key"]] for e in events]
    assert len(history) == len(distinct)
    replayed = receipt_offers.ReceiptOffer()
    answered = {r.position: r.outcome for _, r in done if r.outcome is not Outcome.DUPLICATE}
    links: settlement.Links = {}
    for event, stored in zip(history, events, strict=True):
        replayed, outcome = receipt_offers.apply(replayed, event, settlement.move(links, event))
        assert answered[stored["position"]] is outcome
    assert row["status"] == replayed.status
    assert replayed.points_credited == expected_points
    assert wallet.fold(history).balance == expected_points

    if approvals:
        assert row["status"] == APPROVED
    else:
        assert row["status"] == events[-1]["status"]

    async with pool.acquire() as conn:
        report = await helpers.verify_log(conn)
    assert report.ok, report.differences


# An event of one offer: its status, its `state` ("" absent), and its conversion (None: none
# named, a conversion of its own). A conversion's events all name the conversion's points.
conversion_spec = st.tuples(
    st.sampled_from([APPROVED, APPROVED, APPROVED, *STATUSES]),
    st.sampled_from(["", "approved", "pending", "rejected", "Rejected"]),
    st.sampled_from([0, 1, 2, None]),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    specs=st.lists(conversion_spec, min_size=1, max_size=8),
    points=st.lists(st.integers(min_value=0, max_value=100_000), min_size=3, max_size=3),
    copies=st.lists(st.integers(min_value=0, max_value=7), max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=13), max_size=5),
    data=st.data(),
)
async def test_any_order_and_batching_of_a_conversions_events_credits_it_at_most_once(
    pool: asyncpg.Pool,
    specs: list[tuple[str, str, int | None]],
    points: list[int],
    copies: list[int],
    cuts: list[int],
    data: Any,
) -> None:
    user, offer = unique(), unique("uo")
    names = [unique("conv") for _ in points]
    distinct = []
    for status, state, conversion in specs:
        extra = {"state": state} if state else {}
        if conversion is not None:
            extra["conversion_id"] = names[conversion]
        amount = cents(points[conversion if conversion is not None else 0])
        distinct.append(submission(user, offer, unique("ev"), status, amount, **extra))
    arrivals = data.draw(
        st.permutations(distinct + [distinct[i % len(distinct)] for i in copies]), label="order"
    )
    bounds = sorted({c for c in cuts if c < len(arrivals)})
    batches = [arrivals[a:b] for a, b in zip([0, *bounds], [*bounds, len(arrivals)], strict=True)]
    together = data.draw(
        st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)), label="concurrent"
    )

    done = await append_all(pool, batches, together)
    outcomes = [r.outcome for _, r in done]
    assert Outcome.CONFLICT not in outcomes
    assert {r.answer.status for _, r in done} == {200}

    # The rule, apart from the fold: per conversion, its points once if any approval says
    # approved, taken back whole if any says rejected.
    conversions: dict[str, set[str]] = {}
    amounts: dict[str, Decimal] = {}
    for (status, state, conversion), sub in zip(specs, distinct, strict=True):
        if status != APPROVED or sub.postback is None:
            continue
        name = names[conversion] if conversion is not None else sub.postback.key
        conversions.setdefault(name, set()).add((state or "approved").lower())
        amounts[name] = sub.postback.amount
    credited = sum((amounts[c] for c, s in conversions.items() if "approved" in s), Decimal(0))
    taken = sum(
        (amounts[c] for c, s in conversions.items() if {"approved", "rejected"} <= s), Decimal(0)
    )

    purse = await pool.fetchrow("SELECT * FROM wallets WHERE user_id = $1", user)
    assert purse is not None
    assert (purse["balance"], purse["total_credited"], purse["total_reversed"]) == (
        credited - taken,
        credited,
        taken,
    )
    row = await pool.fetchrow(
        "SELECT * FROM receipt_offers WHERE provider = 'adgate' AND upload_offer_id = $1", offer
    )
    assert row is not None
    assert row["points_credited"] == credited - taken
    if conversions:
        assert row["status"] == APPROVED
    # Each conversion was credited at most once and taken back at most once.
    moved = [r.outcome for _, r in done]
    assert moved.count(Outcome.CREDITED) <= len(conversions)
    assert moved.count(Outcome.REVERSED) <= len(conversions)

    async with pool.acquire() as conn:
        report = await helpers.verify_log(conn)
    assert report.ok, report.differences
