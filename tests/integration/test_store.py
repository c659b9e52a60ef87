"""The one write path: batches, duplicates inside a batch, races, and the fold invariant."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

import asyncpg
import structlog
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.db.write import LogEntry, Submission, append
from service.domain import wallet
from service.domain.events import EventType, Outcome, Postback
from tests import helpers
from tests.helpers import AUTH, medioot, medioot_wall, unique

protocol = medioot_wall()


def submission(user: str, ref: str, amount: str, kind: str = "credit") -> Submission:
    event_type = EventType.CREDITED if kind == "credit" else EventType.REVERSED
    postback = Postback(
        provider="medioot",
        key=f"{kind}:{ref}",
        type=event_type,
        user_id=user,
        amount=Decimal(amount),
        provider_ref=ref,
    )
    log = LogEntry(request_id="test", provider="medioot", method="GET", client_ip=None, params={})
    return Submission(log, protocol.answer, postback=postback)


async def stored_wallet(pool: asyncpg.Pool, user: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT * FROM wallets WHERE user_id = $1", user
    )
    return row


async def test_two_copies_in_one_batch_apply_once(pool: asyncpg.Pool) -> None:
    user, ref = unique(), unique("tx")
    receipts = await append(pool, [submission(user, ref, "7"), submission(user, ref, "7")])
    assert [r.outcome for r in receipts] == [Outcome.CREDITED, Outcome.DUPLICATE]
    assert receipts[0].position == receipts[1].position
    assert [r.answer.body for r in receipts] == ["OK", "DUP"]
    row = await stored_wallet(pool, user)
    assert row is not None and (row["balance"], row["event_count"]) == (Decimal(7), 1)


async def test_conflict_inside_one_batch_applies_nothing_more(pool: asyncpg.Pool) -> None:
    user, other, ref = unique(), unique(), unique("tx")
    receipts = await append(
        pool,
        [submission(user, ref, "7"), submission(user, ref, "70"), submission(other, ref, "7")],
    )
    assert [r.outcome for r in receipts] == [Outcome.CREDITED, Outcome.CONFLICT, Outcome.CONFLICT]
    assert await stored_wallet(pool, other) is None
    row = await stored_wallet(pool, user)
    assert row is not None and row["balance"] == Decimal(7)


async def test_a_batch_mixes_new_duplicate_and_refused(pool: asyncpg.Pool) -> None:
    user, ref = unique(), unique("tx")
    await append(pool, [submission(user, ref, "1")])
    log = LogEntry(
        request_id="r", provider="medioot", method="GET", client_ip="10.0.0.1", params={}
    )
    refused = Submission(
        log,
        protocol.answer,
        refusal=Outcome.REJECTED,
        refusal_detail="invalid signature",
        refusal_status=403,
    )
    receipts = await append(
        pool, [submission(user, ref, "1"), refused, submission(user, unique(), "2")]
    )
    assert [r.outcome for r in receipts] == [Outcome.DUPLICATE, Outcome.REJECTED, Outcome.CREDITED]
    assert receipts[1].answer.status == 403
    count = await pool.fetchval("SELECT count(*) FROM postback_log WHERE request_id = 'r'")
    assert count == 1


async def test_concurrent_retries_of_one_postback_credit_once(client: TestClient) -> None:  # type: ignore[type-arg]
    user, tx = unique(), unique("tx")
    params = medioot(user, tx, "12.34")
    responses = await asyncio.gather(
        *(client.get("/postbacks/medioot", params=params) for _ in range(25))
    )
    bodies = sorted([await r.text() for r in responses])
    assert bodies == ["DUP"] * 24 + ["OK"]
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    assert (await resp.json())["balance"] == "12.34"


async def test_concurrent_credits_to_one_wallet_all_count(
    client: TestClient, pool: asyncpg.Pool
) -> None:  # type: ignore[type-arg]
    user = unique()
    responses = await asyncio.gather(
        *(
            client.get("/postbacks/medioot", params=medioot(user, unique("tx"), "0.1"))
            for _ in range(40)
        )
    )
    assert {r.status for r in responses} == {200}
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    body = await resp.json()
    assert (body["balance"], body["event_count"]) == ("4.0", 40)
    async with pool.acquire() as conn:
        assert (await helpers.verify_log(conn)).ok


async def test_overlapping_conflicting_batches_settle_each_key_once(pool: asyncpg.Pool) -> None:
    # Batches that share keys but no users (conflicting copies) are not serialised by the user
    # locks; each key must still be recorded once, without a transaction having to be retried.
    refs = [unique("tx") for _ in range(400)]
    batches = []
    for n in range(8):
        user = unique()
        order = refs if n % 2 else list(reversed(refs))
        batches.append([submission(user, ref, "1") for ref in random.sample(order, len(order))])
    with structlog.testing.capture_logs() as logs:
        results = await asyncio.gather(*(append(pool, b) for b in batches))
    assert not [e for e in logs if "retrying" in e["event"]]
    outcomes = [r.outcome for receipts in results for r in receipts]
    assert outcomes.count(Outcome.CREDITED) == len(refs)
    assert outcomes.count(Outcome.CONFLICT) == len(refs) * 7


# --- the fold invariant ------------------------------------------------------------------------

operation = st.tuples(
    st.integers(min_value=0, max_value=5),  # which transaction
    st.sampled_from(["credit", "reversal"]),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(operation, min_size=1, max_size=25),
    amounts=st.lists(
        st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False), min_size=6, max_size=6
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=25), max_size=5),
    data=st.data(),
)
async def test_balance_is_the_fold_of_distinct_events_in_any_order(
    pool: asyncpg.Pool, ops: list[Any], amounts: list[Decimal], cuts: list[int], data: Any
) -> None:
    """Any order, any batching, any number of duplicates: each (transaction, kind) counts once
    and the projection equals the domain fold."""
    user = unique()
    refs = [unique("tx") for _ in range(6)]
    shuffled = data.draw(st.permutations(ops))
    subs = [submission(user, refs[i], str(amounts[i]), kind) for i, kind in shuffled]
    bounds = sorted({c for c in cuts if c < len(subs)})
    batches = [subs[a:b] for a, b in zip([0, *bounds], [*bounds, len(subs)], strict=True)]
    await asyncio.gather(*(append(pool, b) for b in batches))

    distinct = {(i, kind) for i, kind in ops}
    expected = wallet.fold(
        Postback(
            provider="medioot",
            key=f"{kind}:{refs[i]}",
            provider_ref=refs[i],
            user_id=user,
            amount=amounts[i],
            type=EventType.CREDITED if kind == "credit" else EventType.REVERSED,
        )
        for i, kind in distinct
    )
    row = await stored_wallet(pool, user)
    assert row is not None
    assert (row["balance"], row["total_credited"], row["total_reversed"], row["event_count"]) == (
        expected.balance,
        expected.total_credited,
        expected.total_reversed,
        expected.event_count,
    )
