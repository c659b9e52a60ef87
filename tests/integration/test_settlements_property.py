"""Credits, reversals and signatures through the one write path and real PostgreSQL: in any
order, any batching (some batches concurrent) and with any number of copies, a user's balance is
the sum over wall transactions of credit - min(reversal, credit), a reversal for another user
moves nothing, and one signature never authenticates two different postbacks."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.db.write import LogEntry, Submission
from service.domain.events import Outcome
from service.providers.base import Inbound
from service.settings import Provider
from tests import helpers
from tests.helpers import MEDIOOT_SECRET, md5, medioot_wall, unique
from tests.integration.test_receipt_offers_property import append_all

PROVIDER = Provider(name="medioot", protocol="medioot", secret=MEDIOOT_SECRET)

MEDIOOT = medioot_wall()


def submission(query: dict[str, str]) -> Submission:
    """One Medioot postback as the handler hands it to the write path."""
    pairs = tuple(query.items())
    inbound = Inbound(method="GET", query=pairs, content_type="", body=b"", client_ip=None)
    log = LogEntry(
        request_id="property", provider="medioot", method="GET", client_ip=None, params={}
    )
    return Submission(log, MEDIOOT.answer, postback=MEDIOOT.normalise(PROVIDER, inbound))


def signed(subid: str, transid: str, reward: str, status: str, **extra: str) -> dict[str, str]:
    sig = md5(subid + transid + reward + MEDIOOT_SECRET)
    return {
        "subid": subid,
        "transid": transid,
        "reward": reward,
        "status": status,
        "signature": sig,
        **extra,
    }


def cents(value: int) -> str:
    return f"{value // 100}.{value % 100:02d}"


# Per wall transaction: a credit, a reversal (by the credit's user, or another one), both, and
# whether the reversal comes under a transaction id of its own, linked by the click.
transaction = st.tuples(
    st.sampled_from(["credit", "reversal", "both"]),
    st.integers(min_value=0, max_value=100_000),
    st.integers(min_value=0, max_value=200_000),
    st.booleans(),  # the reversal names another user
    st.booleans(),  # the reversal has a transid of its own, linked by uuid
)


def batches_of(arrivals: list[Submission], cuts: list[int]) -> list[list[Submission]]:
    bounds = sorted({c for c in cuts if c < len(arrivals)})
    return [arrivals[a:b] for a, b in zip([0, *bounds], [*bounds, len(arrivals)], strict=True)]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    specs=st.lists(transaction, min_size=1, max_size=6),
    copies=st.lists(st.integers(min_value=0, max_value=11), max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=17), max_size=6),
    data=st.data(),
)
async def test_any_order_and_batching_ends_in_credit_minus_what_reversals_may_take(
    pool: asyncpg.Pool,
    specs: list[tuple[str, int, int, bool, bool]],
    copies: list[int],
    cuts: list[int],
    data: Any,
) -> None:
    owner, other = unique("own"), unique("oth")
    distinct: list[Submission] = []
    expected = Decimal(0)
    for shape, credit, reversal, elsewhere, own_transid in specs:
        transid, click = unique("tx"), unique("click")
        if shape in ("credit", "both"):
            distinct.append(submission(signed(owner, transid, cents(credit), "1", uuid=click)))
        if shape in ("reversal", "both"):
            user = other if elsewhere else owner
            reversal_tx = unique("tx") if own_transid else transid
            distinct.append(submission(signed(user, reversal_tx, cents(reversal), "2", uuid=click)))
        if shape == "both" and not elsewhere:
            expected += Decimal(cents(credit)) - min(
                Decimal(cents(reversal)), Decimal(cents(credit))
            )
        elif shape != "reversal":
            expected += Decimal(cents(credit))
    arrivals = data.draw(
        st.permutations(distinct + [distinct[i % len(distinct)] for i in copies]), label="order"
    )
    if data.draw(st.booleans(), label="reversals first"):  # shrinking favours credits first
        arrivals.sort(key=lambda s: s.postback is not None and s.postback.type.value != "reversed")
    batches = batches_of(arrivals, cuts)
    together = data.draw(
        st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)), label="concurrent"
    )

    done = await append_all(pool, batches, together)

    assert {r.answer.status for _, r in done} == {200}
    assert Outcome.REJECTED not in {r.outcome for _, r in done}
    purse = await pool.fetchrow("SELECT * FROM wallets WHERE user_id = $1", owner)
    assert (purse["balance"] if purse else Decimal(0)) == expected
    assert (purse["balance"] if purse else Decimal(0)) >= 0
    stranger = await pool.fetchrow("SELECT balance FROM wallets WHERE user_id = $1", other)
    assert stranger is None or stranger["balance"] == 0
    async with pool.acquire() as conn:
        report = await helpers.verify_log(conn)
    assert report.ok, report.differences


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    transid=st.text("0123456789", min_size=2, max_size=8),
    reward=st.integers(min_value=1, max_value=999_999),
    shifts=st.lists(st.integers(min_value=-6, max_value=6), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=5), max_size=3),
    data=st.data(),
)
async def test_one_signature_credits_once_however_its_fields_are_reshaped(
    pool: asyncpg.Pool,
    transid: str,
    reward: int,
    shifts: list[int],
    cuts: list[int],
    data: Any,
) -> None:
    subid, amount = unique("u"), cents(reward)
    generated, transid = transid, unique("t") + "-" + transid  # unique: the database is shared
    genuine = signed(subid, transid, amount, "1")
    whole = subid + transid + amount
    reshaped = []
    for shift in sorted(set(shifts)):
        if shift <= -len(generated):
            continue  # stay within the generated characters, so each example is reproducible
        # Move the transid/reward boundary by `shift` characters: the same signed string.
        cut = len(subid) + len(transid) + shift
        if len(subid) < cut < len(whole) - 1 and cut != len(subid) + len(transid):
            reward_text = whole[cut:]
            if reward_text[0].isdigit() and reward_text.count(".") <= 1:
                reshaped.append(
                    {**genuine, "transid": whole[len(subid) : cut], "reward": reward_text}
                )
    assume(reshaped)
    subs = [submission(genuine)] + [submission(q) for q in reshaped]
    arrivals = data.draw(st.permutations(subs), label="order")
    batches = batches_of(arrivals, cuts)
    together = data.draw(
        st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)), label="concurrent"
    )

    done = await append_all(pool, batches, together)

    # The one accepted may be a reshaping whose reward is zero ("0"): recorded, moving nothing.
    accepted = [r for _, r in done if r.outcome in (Outcome.CREDITED, Outcome.RECORDED)]
    assert len(accepted) == 1
    assert sum(1 for _, r in done if r.answer.status == 403) == len(subs) - 1
    row = await pool.fetchrow("SELECT balance, event_count FROM wallets WHERE user_id = $1", subid)
    assert row is not None and row["event_count"] == 1
