"""The fast `verify` (hashed bytes from the database, plain credits and reversals folded in SQL)
against the domain fold of the whole log: on random logs, intact or tampered with, both say the
same; and the bytes the chain check hashes are the database's own, for odd values too."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import verify as verifying
from service.chains import check_chains
from service.db import read, roles
from service.domain import chain
from service.rebuild import rebuild
from service.replay import replay
from service.verify import Report
from tests import helpers
from tests.helpers import unique

KEY = helpers.chain_key()
EXAMPLES = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# --- the hashed bytes ---------------------------------------------------------------------------

text = st.text(st.characters(exclude_characters="\x00", codec="utf-8"), max_size=12)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
amount = st.sampled_from(
    ["0", "0.00", "1", "10.50", "0.000000000000000000001", "999999999999999.99999999999999999999"]
)


@EXAMPLES
@given(
    user=text.filter(bool),
    ref=text,
    value=amount,
    data=st.dictionaries(text, json_value, max_size=4),
    test=st.booleans(),
)
async def test_the_hashed_bytes_are_the_databases_for_odd_values(
    pool: asyncpg.Pool, user: str, ref: str, value: str, data: dict[str, Any], test: bool
) -> None:
    position = await pool.fetchval(
        "INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test, data)"
        " VALUES ('medi\u00f6ot', $1, 'credited', $2, $3::numeric, $4, $5, $6::jsonb)"
        " RETURNING position",
        unique('k"\\\n'),
        user,
        value,
        ref,
        test,
        data,
    )
    row = await pool.fetchrow(
        f"SELECT {read.EVENT_COLUMNS}, amount::text AS amount_text, data::text AS data_text"
        " FROM events WHERE position = $1",
        position,
    )
    fields = (row["position"], row["provider"], row["key"], row["type"], row["user_id"])
    rest = (row["amount_text"], row["provider_ref"], row["test"], row["data_text"])
    when = chain.instant(row["recorded_at"])
    assert chain.body(*fields, *rest, when) == helpers.event_message(row, None)
    # The database hashed its own bytes (event_message): the chain check agrees with them.
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        checked = await check_chains(conn, KEY, None)
    assert not [b for b in checked.chain_breaks if f"event {position} " in b]


# --- random logs ---------------------------------------------------------------------------------

USERS = ["a", "b", "\u00fc-\U0001f600"]
REFS = ["r1", "r2", "conversion:c1", "k-x"]
HOLDS = ["h1", "h2"]


def amounts() -> st.SearchStrategy[str]:
    return st.builds(
        lambda n, scale: format(Decimal(n).scaleb(-scale), "f"),
        st.integers(0, 100_000),
        st.integers(0, 3),
    )


wall_event = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["credited", "reversed"]),
        "request": st.booleans(),
        "user": st.sampled_from(USERS),
        "amount": amounts(),
        "ref": st.sampled_from(REFS),
        "test": st.booleans(),
        "data": st.sampled_from(
            [
                {},
                {},
                {"reverses_whole_credit": True},
                {"reverses_whole_credit": "true"},
                {"link": "r1"},
                {"link": ""},
                {"uuid": "click"},
            ]
        ),
    }
)
receipt_event = st.fixed_dictionaries(
    {
        "type": st.just("receipt_status_changed"),
        "user": st.sampled_from(USERS),
        "amount": amounts(),
        "offer": st.sampled_from(["o1", "o2"]),
        "status": st.sampled_from(["MANUAL_REVIEW", "AWARD_PENDING", "APPROVED", "REJECTED"]),
        "state": st.sampled_from([None, "approved", "pending", "rejected"]),
        "conversion": st.sampled_from([None, "", "c1"]),
        "test": st.booleans(),
    }
)
other_event = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["debited", "hold"]),
        "user": st.sampled_from(USERS),
        "amount": amounts(),
        "hold": st.sampled_from(HOLDS),
        "end": st.sampled_from([None, "captured", "voided"]),
        "test": st.booleans(),
    }
)
log = st.lists(st.one_of(wall_event, wall_event, receipt_event, other_event), max_size=14)

Row = tuple[str, str, str, str, str, str, bool, dict[str, Any]]


def rows_of(spec: dict[str, Any], token: str, i: int) -> list[Row]:
    """The event rows (provider, key, type, user, amount, ref, test, data) of one spec."""
    user, value, test = spec["user"], spec["amount"], spec["test"]
    key = f"{token}-{i}"
    if spec["type"] in ("credited", "reversed"):
        key = f"request:{key}" if spec["request"] else key
        ref = f"{token}-{spec['ref']}"
        data = {k: f"{token}-{v}" if k == "link" and v else v for k, v in spec["data"].items()}
        return [("medioot", key, spec["type"], user, value, ref, test, data)]
    if spec["type"] == "receipt_status_changed":
        data = {"upload_offer_id": f"{token}-{spec['offer']}", "status": spec["status"]}
        if spec["state"] is not None:
            data["conversion_state"] = spec["state"]
        if spec["conversion"] is not None:
            data["conversion_id"] = spec["conversion"] and f"{token}-{spec['conversion']}"
        return [("adgate", key, spec["type"], user, value, "", test, data)]
    if spec["type"] == "debited":
        return [("spender", key, "debited", user, value, "", test, {})]
    hold = f"{token}-{spec['hold']}-{i}"
    expires = chain_time(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    rows: list[Row] = [
        ("spender", key, "hold_placed", user, value, "", False,
         {"hold_id": hold, "expires_at": expires, "reference": None})
    ]  # fmt: skip
    closing = f"hold:{hold}:closed"
    if spec["end"] == "captured":
        rows.append(
            ("spender", closing, "hold_captured", user, value, "", False,
             {"hold_id": hold, "released": "0"})
        )  # fmt: skip
    elif spec["end"] == "voided":
        rows.append(
            ("spender", closing, "hold_released", user, value, "", False,
             {"hold_id": hold, "reason": "voided"})
        )  # fmt: skip
    return rows


def chain_time(moment: dt.datetime) -> str:
    return moment.isoformat()


async def append(pool: asyncpg.Pool, specs: list[dict[str, Any]]) -> list[int]:
    """Append the events of `specs` (through the chain trigger) and rebuild the projections
    with the domain fold; the positions appended."""
    token = unique("x")
    rows = [row for i, spec in enumerate(specs) for row in rows_of(spec, token, i)]
    positions = []
    for provider, key, kind, user, value, ref, test, data in rows:
        positions.append(
            await pool.fetchval(
                "INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test,"
                " data) VALUES ($1, $2, $3, $4, $5::numeric, $6, $7, $8::jsonb)"
                " RETURNING position",
                provider,
                key,
                kind,
                user,
                value,
                ref,
                test,
                data,
            )
        )
    async with pool.acquire() as conn:
        await rebuild(conn, KEY)
    return positions


async def reference(conn: asyncpg.Connection) -> Report:
    """What `verify` said before it had a fast path: the domain fold of every event."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        guards = [
            *await roles.trigger_problems(conn),
            *await roles.runtime_problems(conn, helpers.RUNTIME_ROLE),
        ]
        result = await replay(conn, "verify", KEY)
        differences, wallets, offers = await verifying._replayed_projections(conn, KEY)
    report = Report(
        events=result.events,
        wallets=wallets,
        offers=offers,
        differences=[*guards, *result.chain_breaks, *differences],
    )
    if result.unkeyed:
        report.notes.append(f"{result.unkeyed} events unkeyed (hashed before the chain key)")
    return report


async def fast_path_agrees(conn: asyncpg.Connection) -> bool:
    """Whether the fast fold alone found the projections right (no replay of the whole log)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await verifying._fast_projections(conn) is not None


async def same_reports(pool: asyncpg.Pool) -> Report:
    async with pool.acquire() as conn:
        fast = await helpers.verify_log(conn)
        slow = await reference(conn)
    assert fast.differences == slow.differences
    assert fast.summary() == slow.summary()
    return fast


TAMPERING = [
    "UPDATE wallets SET total_credited = total_credited + 0.01 WHERE user_id = $1",
    "UPDATE wallets SET event_count = event_count + 1 WHERE user_id = $1",
    "DELETE FROM wallets WHERE user_id = $1",
    "INSERT INTO wallets (user_id) VALUES ($1 || '-ghost')",
    "UPDATE settlements SET credited = credited + 1 WHERE credit_user = $1",
    "UPDATE settlements SET reversal_whole = NOT reversal_whole WHERE reversal_user = $1",
    "UPDATE settlements SET credit_user = credit_user || '!' WHERE credit_user = $1",
    "DELETE FROM settlements WHERE reversal_user = $1",
    "UPDATE receipt_offers SET approvals = approvals + 1 WHERE user_id = $1",
    "UPDATE holds SET released = released + 1 WHERE user_id = $1",
]


@EXAMPLES
@given(specs=log, tamper=st.sampled_from(TAMPERING), user=st.sampled_from(USERS))
async def test_fast_verify_and_the_domain_fold_agree_on_random_logs(
    pool: asyncpg.Pool, specs: list[dict[str, Any]], tamper: str, user: str
) -> None:
    await append(pool, specs)
    report = await same_reports(pool)
    assert report.ok, report.differences
    async with pool.acquire() as conn:
        assert await fast_path_agrees(conn)

    await pool.execute(tamper, user)
    try:
        report = await same_reports(pool)
        async with pool.acquire() as conn:
            assert await fast_path_agrees(conn) == report.ok
    finally:
        async with pool.acquire() as conn:
            await rebuild(conn, KEY)


@EXAMPLES
@given(specs=log.filter(bool), which=st.integers(0, 100))
async def test_an_edited_event_is_named_alike(
    pool: asyncpg.Pool, specs: list[dict[str, Any]], which: int
) -> None:
    positions = await append(pool, specs)
    position = positions[which % len(positions)]
    before = await pool.fetchval("SELECT amount::text FROM events WHERE position = $1", position)
    await helpers.set_event_amount(pool, position, str(Decimal(before) + 1))
    try:
        report = await same_reports(pool)
        assert any(f"event {position} " in line for line in report.differences)
    finally:
        await helpers.set_event_amount(pool, position, before)
    assert (await same_reports(pool)).ok
