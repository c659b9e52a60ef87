"""inBrain callbacks through HTTP against real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from service.app import create_app
from service.settings import Settings
from tests import helpers
from tests.helpers import AUTH, MEDIOOT_SECRET, unique

Client = TestClient[web.Request, web.Application]

SECRET = "test-inbrain-secret"
SEED_PANELIST = "6a8c5d53-d8bf-4a3e-ba54-460d00f5caa0"
SEED_REWARD_ID = "c55b3483-5755-42f8-9bc5-5c185862e35a"
REVERSED = "offer_completion_reversed"
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def inbrain_settings(database_url: str) -> Settings:
    return helpers.settings(
        database_url,
        providers=[
            {"name": "medioot", "protocol": "medioot", "secret": MEDIOOT_SECRET},
            {"name": "inbrain", "protocol": "inbrain", "secret": SECRET},
        ],
    )


@pytest.fixture
async def client(aiohttp_client: Any, inbrain_settings: Settings) -> Client:
    result: Client = await aiohttp_client(create_app(inbrain_settings))
    return result


# --- building callbacks --------------------------------------------------------------------------


class Raw(str):
    """JSON text put into a body verbatim: numbers exactly as written, or invalid tokens."""


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()


def sign(panelist: str, reward_id: str, secret: str = SECRET) -> str:
    return md5(panelist + reward_id + secret)


def encode(fields: Mapping[str, object]) -> bytes:
    parts = [
        f"{json.dumps(k)}: {v if isinstance(v, Raw) else json.dumps(v)}" for k, v in fields.items()
    ]
    return ("{" + ", ".join(parts) + "}").encode("utf-8", "surrogatepass")


def callback(
    panelist: str,
    reward_id: str,
    reward: object = Raw("100"),
    reward_type: str = "offer_completed",
    *,
    secret: str = SECRET,
    **extra: object,
) -> dict[str, object]:
    return {
        "Sig": sign(panelist, reward_id, secret),
        "PanelistId": panelist,
        "RewardId": reward_id,
        "Reward": reward,
        "RewardType": reward_type,
        **extra,
    }


# --- reading the outcome -------------------------------------------------------------------------


async def send(client: Client, fields: Mapping[str, object] | bytes) -> tuple[int, str]:
    body = fields if isinstance(fields, bytes) else encode(fields)
    resp = await client.post("/postbacks/inbrain", data=body, headers=JSON_HEADERS)
    return resp.status, await resp.text()


async def wallet(client: Client, user: str) -> dict[str, Any] | None:
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    if resp.status == 404:
        return None
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def balance(client: Client, user: str) -> str | None:
    body = await wallet(client, user)
    return None if body is None else str(body["balance"])


async def api_events(client: Client, user: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/wallets/{user}/events", headers=AUTH)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    events: list[dict[str, Any]] = body["events"]
    return events


async def events_of(pool: asyncpg.Pool, reward_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM events WHERE provider = 'inbrain' AND provider_ref = $1 ORDER BY position",
        reward_id,
    )
    return rows


async def inbrain_event_total(pool: asyncpg.Pool) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM events WHERE provider = 'inbrain'")
    return n


async def log_of(pool: asyncpg.Pool, reward_id: str) -> list[asyncpg.Record]:
    """The postback log rows of one RewardId, oldest first."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM postback_log WHERE provider = 'inbrain' AND params->>'RewardId' = $1"
        " ORDER BY id",
        reward_id,
    )
    return rows


async def last_log(pool: asyncpg.Pool) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow(
        "SELECT * FROM postback_log WHERE provider = 'inbrain' ORDER BY id DESC LIMIT 1"
    )
    return row


def counter(outcome: str) -> float:
    labels = {"provider": "inbrain", "outcome": outcome}
    return REGISTRY.get_sample_value("ledger_postbacks_total", labels) or 0.0


def signature_failures() -> float:
    labels = {"provider": "inbrain", "reason": "signature"}
    return REGISTRY.get_sample_value("ledger_postback_signature_failures_total", labels) or 0.0


# --- the seed's example --------------------------------------------------------------------------


async def test_seed_example_credits(client: Client, pool: asyncpg.Pool) -> None:
    fields = {
        "Sig": sign(SEED_PANELIST, SEED_REWARD_ID),
        "PanelistId": SEED_PANELIST,
        "OfferTitle": "The Offer Name",
        "RewardType": "offer_completed",
        "RewardId": SEED_REWARD_ID,
        "Reward": Raw("100"),
        "RevenueAmount": Raw("1.00"),
    }
    before = counter("credited")
    assert await send(client, fields) == (200, "OK")
    assert counter("credited") == before + 1
    body = await wallet(client, SEED_PANELIST)
    assert body is not None
    assert (body["balance"], body["total_credited"], body["total_reversed"]) == ("100", "100", "0")
    assert body["event_count"] == 1
    (row,) = await events_of(pool, SEED_REWARD_ID)
    assert (row["type"], row["amount"], row["key"], row["user_id"], row["test"]) == (
        "credited",
        Decimal("100"),
        f"credit:{SEED_REWARD_ID}",
        SEED_PANELIST,
        False,
    )
    assert row["data"]["offer_title"] == "The Offer Name"
    assert row["data"]["revenue_amount"] == "1.00"
    (log,) = await log_of(pool, SEED_REWARD_ID)
    assert (log["outcome"], log["http_status"], log["event_position"]) == (
        "credited",
        200,
        row["position"],
    )
    (event,) = await api_events(client, SEED_PANELIST)
    assert (event["type"], event["provider"], event["provider_ref"], event["amount"]) == (
        "credited",
        "inbrain",
        SEED_REWARD_ID,
        "100",
    )


# --- exact decimals ------------------------------------------------------------------------------


async def test_three_tenths_sum_exactly(client: Client) -> None:
    user = unique()
    for _ in range(3):
        assert await send(client, callback(user, unique("r"), Raw("0.1"))) == (200, "OK")
    body = await wallet(client, user)
    assert body is not None
    assert (body["balance"], body["total_credited"], body["event_count"]) == ("0.3", "0.3", 3)


@pytest.mark.parametrize("reward", [Raw("2.50"), "2.50"])
async def test_reward_keeps_its_scale(client: Client, pool: asyncpg.Pool, reward: object) -> None:
    user, rid = unique(), unique("r")
    assert await send(client, callback(user, rid, reward)) == (200, "OK")
    assert await balance(client, user) == "2.50"
    (row,) = await events_of(pool, rid)
    assert str(row["amount"]) == "2.50"
    (event,) = await api_events(client, user)
    assert event["amount"] == "2.50"


async def test_large_precise_reward_is_exact(client: Client) -> None:
    user = unique()
    amount = "999999999999999.99999999999999999999"
    assert await send(client, callback(user, unique("r"), Raw(amount))) == (200, "OK")
    assert await send(client, callback(user, unique("r"), Raw("0.00000000000000000001"))) == (
        200,
        "OK",
    )
    assert await balance(client, user) == "1000000000000000.00000000000000000000"


# --- reward types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reward_type",
    [
        "offer_completed",
        "survey_completed",
        "profiler_completed",
        "ad_hoc",
        "survey_disqualified",
        "brand_new_type",
    ],
)
async def test_every_other_reward_type_credits(
    client: Client, pool: asyncpg.Pool, reward_type: str
) -> None:
    user, rid = unique(), unique("r")
    before = counter("credited")
    assert await send(client, callback(user, rid, Raw("1.25"), reward_type)) == (200, "OK")
    assert await balance(client, user) == "1.25"
    (row,) = await events_of(pool, rid)
    assert (row["type"], row["key"]) == ("credited", f"credit:{rid}")
    assert row["data"]["reward_type"] == reward_type
    assert counter("credited") == before + 1


async def test_reversal_reusing_the_reward_id_subtracts(client: Client, pool: asyncpg.Pool) -> None:
    user, rid = unique(), unique("r")
    assert await send(client, callback(user, rid, Raw("2.50"))) == (200, "OK")
    assert await balance(client, user) == "2.50"
    reversed_before, duplicate_before = counter("reversed"), counter("duplicate")
    reversal = callback(user, rid, Raw("2.50"), REVERSED)
    assert await send(client, reversal) == (200, "OK")
    assert counter("reversed") == reversed_before + 1
    body = await wallet(client, user)
    assert body is not None
    assert (body["balance"], body["total_credited"], body["total_reversed"]) == (
        "0.00",
        "2.50",
        "2.50",
    )
    # Its retry is a duplicate of the reversal, not a second subtraction.
    assert await send(client, reversal) == (200, "OK")
    assert await balance(client, user) == "0.00"
    assert counter("duplicate") == duplicate_before + 1
    rows = await events_of(pool, rid)
    assert [(r["type"], r["key"]) for r in rows] == [
        ("credited", f"credit:{rid}"),
        ("reversed", f"reversal:{rid}"),
    ]
    assert [r["outcome"] for r in await log_of(pool, rid)] == ["credited", "reversed", "duplicate"]


async def test_reversal_before_its_completion_ends_the_same(client: Client) -> None:
    user, rid = unique(), unique("r")
    assert await send(client, callback(user, rid, Raw("3"), REVERSED)) == (200, "OK")
    assert await balance(client, user) == "0"  # recorded; it waits for the credit it reverses
    assert await send(client, callback(user, rid, Raw("3"))) == (200, "OK")
    assert await balance(client, user) == "0"


@pytest.mark.parametrize(
    ("reward_type", "reward"),
    [("offer_clicked", Raw("0")), ("survey_disqualified", Raw("0")), ("offer_completed", "0.00")],
)
async def test_zero_reward_is_recorded_without_moving_the_balance(
    client: Client, pool: asyncpg.Pool, reward_type: str, reward: object
) -> None:
    user, rid = unique(), unique("r")
    assert await send(client, callback(user, unique("r"), Raw("5"))) == (200, "OK")
    before = counter("recorded")
    assert await send(client, callback(user, rid, reward, reward_type)) == (200, "OK")
    assert counter("recorded") == before + 1
    body = await wallet(client, user)
    assert body is not None
    # A zero of scale 2 may widen the balance's scale ("5.00"); its value must not move.
    assert Decimal(body["balance"]) == Decimal("5")
    assert Decimal(body["total_credited"]) == Decimal("5")
    assert body["event_count"] == 2
    (row,) = await events_of(pool, rid)
    assert row["amount"] == 0
    assert row["data"]["reward_type"] == reward_type
    (log,) = await log_of(pool, rid)
    assert (log["outcome"], log["http_status"], log["event_position"]) == (
        "recorded",
        200,
        row["position"],
    )


async def test_is_test_is_recorded_as_a_test_and_moves_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, rid = unique(), unique("r")
    assert await send(client, callback(user, unique("r"), Raw("5"))) == (200, "OK")
    before = counter("recorded")
    fields = callback(user, rid, Raw("10"), "survey_completed", SessionId=unique("s"), IsTest=True)
    assert await send(client, fields) == (200, "OK")
    assert counter("recorded") == before + 1
    assert await balance(client, user) == "5"
    (row,) = await events_of(pool, rid)
    assert row["test"] is True
    assert row["amount"] == Decimal("10")
    assert (await log_of(pool, rid))[0]["outcome"] == "recorded"
    events = await api_events(client, user)
    assert [e["test"] for e in events if e["provider_ref"] == rid] == [True]


async def test_real_callback_after_a_test_one_with_the_same_reward_id_is_not_a_duplicate(
    client: Client, pool: asyncpg.Pool
) -> None:
    # The test event moved nothing; calling the real one "already recorded" would lose it.
    user, rid = unique(), unique("r")
    assert await send(client, callback(user, rid, Raw("10"), IsTest=True)) == (200, "OK")
    assert await send(client, callback(user, rid, Raw("10"), IsTest=False)) == (200, "OK")
    outcome = (await log_of(pool, rid))[-1]["outcome"]
    assert outcome != "duplicate"
    if outcome == "conflict":
        assert await balance(client, user) == "0"
    else:
        assert await balance(client, user) == "10"


# --- duplicates and conflicts --------------------------------------------------------------------


async def test_duplicate_answers_ok_and_applies_once(client: Client, pool: asyncpg.Pool) -> None:
    user, rid = unique(), unique("r")
    fields = callback(user, rid, Raw("7.5"))
    assert await send(client, fields) == (200, "OK")
    before = counter("duplicate")
    for _ in range(3):
        assert await send(client, fields) == (200, "OK")
    assert counter("duplicate") == before + 3
    assert await balance(client, user) == "7.5"
    assert len(await events_of(pool, rid)) == 1
    outcomes = [r["outcome"] for r in await log_of(pool, rid)]
    assert outcomes == ["credited", "duplicate", "duplicate", "duplicate"]


async def test_same_reward_written_differently_is_a_duplicate(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, rid = unique(), unique("r")
    assert await send(client, callback(user, rid, Raw("2.5"))) == (200, "OK")
    assert await send(client, callback(user, rid, "2.50", "survey_completed")) == (200, "OK")
    assert await balance(client, user) == "2.5"
    assert (await log_of(pool, rid))[-1]["outcome"] == "duplicate"


async def test_twenty_concurrent_duplicates_credit_once(client: Client, pool: asyncpg.Pool) -> None:
    user, rid = unique(), unique("r")
    body = encode(callback(user, rid, Raw("3.33")))
    results = await asyncio.gather(*(send(client, body) for _ in range(20)))
    assert results == [(200, "OK")] * 20
    assert await balance(client, user) == "3.33"
    body_wallet = await wallet(client, user)
    assert body_wallet is not None and body_wallet["event_count"] == 1
    assert len(await events_of(pool, rid)) == 1
    outcomes = sorted(r["outcome"] for r in await log_of(pool, rid))
    assert outcomes == ["credited"] + ["duplicate"] * 19


@pytest.mark.parametrize("change", ["user", "amount"])
async def test_conflict_answers_ok_and_applies_nothing(
    client: Client, pool: asyncpg.Pool, change: str
) -> None:
    user, other, rid = unique(), unique(), unique("r")
    assert await send(client, callback(user, rid, Raw("4"))) == (200, "OK")
    before = counter("conflict")
    clash = callback(other, rid, Raw("4")) if change == "user" else callback(user, rid, Raw("40"))
    assert await send(client, clash) == (200, "OK")
    assert counter("conflict") == before + 1
    assert await balance(client, user) == "4"
    assert await balance(client, other) is None
    rows = await events_of(pool, rid)
    assert [(r["user_id"], r["amount"]) for r in rows] == [(user, Decimal("4"))]
    log = (await log_of(pool, rid))[-1]
    assert (log["outcome"], log["http_status"]) == ("conflict", 200)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["secret", "garbage", "empty", "swapped"])
async def test_bad_sig_is_403_and_credits_nothing(
    client: Client, pool: asyncpg.Pool, how: str
) -> None:
    user, rid = unique(), unique("r")
    fields = callback(user, rid, Raw("10"))
    fields["Sig"] = {
        "secret": sign(user, rid, "wrong-secret"),
        "garbage": "0" * 32,
        "empty": "",
        "swapped": md5(rid + user + SECRET),
    }[how]
    rejected, failures = counter("rejected"), signature_failures()
    status, _ = await send(client, fields)
    assert status == 403
    assert counter("rejected") == rejected + 1
    assert signature_failures() == failures + 1
    assert await events_of(pool, rid) == []
    assert await balance(client, user) is None
    (log,) = await log_of(pool, rid)
    assert (log["outcome"], log["http_status"], log["event_position"]) == ("rejected", 403, None)
    assert "Sig" not in log["params"]
    assert log["params"]["PanelistId"] == user


async def test_uppercase_sig_is_accepted(client: Client) -> None:
    user, rid = unique(), unique("r")
    fields = callback(user, rid, Raw("1"))
    fields["Sig"] = str(fields["Sig"]).upper()
    assert await send(client, fields) == (200, "OK")
    assert await balance(client, user) == "1"


def _valid(**changes: object) -> bytes:
    fields = callback("u-malformed", "r-malformed", Raw("1"), OfferTitle="o")
    fields.update(changes)
    fields["Sig"] = sign(str(fields.get("PanelistId", "")), str(fields.get("RewardId", "")))
    return encode({k: v for k, v in fields.items() if v is not MISSING})


MISSING = Raw("<missing>")

MALFORMED: dict[str, bytes] = {
    "not json": b"not json",
    "truncated": b'{"Sig": "x", "PanelistId": ',
    "empty body": b"",
    "single quotes": b"{'Sig': 'x'}",
    "json array": b"[1, 2]",
    "array of a callback": b"[" + _valid() + b"]",
    "json null": b"null",
    "json string": b'"text"',
    "json number": b"5",
    "missing Sig": encode({"PanelistId": "u", "RewardId": "r", "Reward": 1}),
    "missing PanelistId": _valid(PanelistId=MISSING),
    "missing RewardId": _valid(RewardId=MISSING),
    "missing Reward": _valid(Reward=MISSING),
    "Reward abc": _valid(Reward="abc"),
    "Reward -1": _valid(Reward=Raw("-1")),
    "Reward '-1'": _valid(Reward="-1"),
    "Reward NaN token": _valid(Reward=Raw("NaN")),
    "Reward 'NaN'": _valid(Reward="NaN"),
    "Reward 'Infinity'": _valid(Reward="Infinity"),
    "Reward 1e999999": _valid(Reward=Raw("1e999999")),
    "Reward '1e999999'": _valid(Reward="1e999999"),
    "Reward 10^15": _valid(Reward=Raw("1000000000000000")),
    "Reward 21 decimals": _valid(Reward=Raw("0.000000000000000000001")),
    "Reward true": _valid(Reward=Raw("true")),
    "Reward null": _valid(Reward=Raw("null")),
    "Reward empty string": _valid(Reward=""),
    "empty PanelistId": _valid(PanelistId=""),
    "empty RewardId": _valid(RewardId=""),
    "NUL in PanelistId": _valid(PanelistId="u\x00v"),
    "NUL in OfferTitle": _valid(OfferTitle="o\x00"),
    "lone surrogate in PanelistId": _valid(PanelistId="u\ud800"),
    "PanelistId over 255": _valid(PanelistId="u" * 256),
    "RewardId over 255": _valid(RewardId="r" * 256),
    "PanelistId a number": _valid(PanelistId=Raw("12")),
    "IsTest a string": _valid(IsTest="yes"),
    "invalid utf8 in PanelistId": _valid().replace(b'"u-malformed"', b'"u-malformed\xff"'),
    "invalid utf8 in OfferTitle": _valid().replace(b'"o"', b'"o\xfe"'),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_body_is_400_and_records_nothing(
    client: Client, pool: asyncpg.Pool, name: str
) -> None:
    events_before, invalid_before = await inbrain_event_total(pool), counter("invalid")
    status, text = await send(client, MALFORMED[name])
    assert status == 400, (status, text)
    assert text and "\n" not in text
    assert await inbrain_event_total(pool) == events_before
    assert counter("invalid") == invalid_before + 1
    log = await last_log(pool)
    assert (log["outcome"], log["http_status"], log["event_position"]) == ("invalid", 400, None)


@pytest.mark.parametrize("reward", [Raw("0e999999"), "0E+999999", Raw("1e-5"), Raw("1E+2")])
async def test_exponent_rewards_never_get_a_5xx(
    client: Client, pool: asyncpg.Pool, reward: object
) -> None:
    user, rid = unique(), unique("r")
    status, text = await send(client, callback(user, rid, reward))
    assert status in (200, 400), (status, text)
    if status == 200:
        (row,) = await events_of(pool, rid)
        assert row["amount"] == Decimal(str(reward))


async def test_huge_revenue_amount_is_not_stored_as_a_million_digits(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, rid = unique(), unique("r")
    status, _ = await send(client, callback(user, rid, Raw("1"), RevenueAmount=Raw("1e999999")))
    assert status in (200, 400)
    for row in await events_of(pool, rid):
        assert len(json.dumps(row["data"])) < 4096


async def test_body_over_the_limit_is_413(client: Client, pool: asyncpg.Pool) -> None:
    user, rid = unique(), unique("r")
    body = encode(callback(user, rid, Raw("5"), OfferTitle="x" * 5000))
    assert len(body) > 4096
    before = counter("invalid")
    status, _ = await send(client, body)
    assert status == 413
    assert counter("invalid") == before + 1
    assert await events_of(pool, rid) == []
    assert await balance(client, user) is None
    log = await last_log(pool)
    assert (log["outcome"], log["http_status"]) == ("invalid", 413)


async def test_get_without_a_body_is_400(client: Client) -> None:
    resp = await client.get("/postbacks/inbrain", params={"PanelistId": "u", "RewardId": "r"})
    assert resp.status == 400


# --- the Sig is never kept -----------------------------------------------------------------------


async def test_sig_never_appears_in_the_postback_log(client: Client, pool: asyncpg.Pool) -> None:
    user, rid = unique(), unique("r")
    good = callback(user, rid, Raw("1"))
    bad = callback(user, unique("r"), Raw("1"), secret="other")
    bad_reward = callback(user, unique("r"), "abc")
    sent = [good, good, bad, bad_reward, callback(user, rid, Raw("2"))]  # last: a conflict
    for fields in sent:
        await send(client, fields)
    resp = await client.get("/v1/postbacks", params={"provider": "inbrain"}, headers=AUTH)
    assert resp.status == 200
    text = await resp.text()
    page: dict[str, Any] = json.loads(text)
    assert any(p["params"].get("RewardId") == rid for p in page["postbacks"])
    for fields in sent:
        assert str(fields["Sig"]) not in text
        assert str(fields["Sig"]).upper() not in text
    rows = await pool.fetch("SELECT params::text AS p, detail FROM postback_log")
    for fields in sent:
        assert all(str(fields["Sig"]) not in r["p"] + r["detail"] for r in rows)


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "application/json"]
)
async def test_sig_is_not_logged_whatever_the_content_type(
    client: Client, content_type: str
) -> None:
    fields = callback(unique(), unique("r"), Raw("1"))
    resp = await client.post(
        "/postbacks/inbrain", data=encode(fields), headers={"Content-Type": content_type}
    )
    assert resp.status < 500
    resp = await client.get("/v1/postbacks", params={"provider": "inbrain"}, headers=AUTH)
    assert str(fields["Sig"]) not in await resp.text()


async def test_logs_never_carry_the_sig_or_the_secret(client: Client) -> None:
    good = callback(unique(), unique("r"), Raw("1"))
    bad = callback(unique(), unique("r"), Raw("1"), secret="other")
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await send(client, good)
        await send(client, bad)
        await send(client, callback(unique(), unique("r"), "abc"))
    text = repr(logs)
    assert logs
    for secret in (SECRET, str(good["Sig"]), str(bad["Sig"])):
        assert secret not in text


# --- random input --------------------------------------------------------------------------------

FIELDS = [
    "Sig",
    "PanelistId",
    "RewardId",
    "Reward",
    "RevenueAmount",
    "RewardType",
    "OfferTitle",
    "SessionId",
    "IsTest",
    "Other",
]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.decimals(allow_nan=True, allow_infinity=True).map(str)
    | st.sampled_from(
        [
            Raw("1e999999"),
            Raw("0e999999"),
            Raw("-0"),
            Raw("2.50"),
            Raw("NaN"),
            Raw("1E-30"),
            REVERSED,
            "offer_completed",
        ]
    )
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)


@hypothesis_settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fields=st.dictionaries(st.sampled_from(FIELDS), _values, max_size=len(FIELDS)),
    ids=st.tuples(st.text(max_size=12), st.text(max_size=12)),
    signed=st.booleans(),
)
async def test_random_callbacks_never_get_a_5xx(
    client: Client, fields: dict[str, object], ids: tuple[str, str], signed: bool
) -> None:
    if signed:
        fields["PanelistId"], fields["RewardId"] = ids
        fields["Sig"] = sign(*ids)
    status, text = await send(client, fields)
    assert status in (200, 400, 403, 413), (status, text)
