"""Medioot postbacks through HTTP against real PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from service.app import create_app
from tests import helpers
from tests.helpers import AUTH, MEDIOOT_SECRET, medioot, unique

Client = TestClient  # type: ignore[type-arg]


async def balance(client: Client, user: str) -> str | None:
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    if resp.status == 404:
        return None
    body: dict[str, Any] = await resp.json()
    return str(body["balance"])


async def event_count(pool: asyncpg.Pool, **where: str) -> int:
    clauses = " AND ".join(f"{k} = ${i}" for i, k in enumerate(where, 1))
    n: int = await pool.fetchval(f"SELECT count(*) FROM events WHERE {clauses}", *where.values())
    return n


async def last_log(pool: asyncpg.Pool) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow("SELECT * FROM postback_log ORDER BY id DESC LIMIT 1")
    return row


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def get(client: Client, params: dict[str, str]) -> tuple[int, str]:
    resp = await client.get("/postbacks/medioot", params=params)
    return resp.status, await resp.text()


async def test_credit_answers_ok_and_moves_the_balance(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "10.50", uuid="click-1")) == (200, "OK")
    assert await balance(client, user) == "10.50"
    row = await pool.fetchrow("SELECT * FROM events WHERE provider_ref = $1", tx)
    assert (row["type"], row["amount"], row["key"]) == (
        "credited",
        Decimal("10.50"),
        f"credit:{tx}",
    )
    assert row["data"]["uuid"] == "click-1"


async def test_retry_is_dup_and_applies_once(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    params = medioot(user, tx, "5")
    assert await get(client, params) == (200, "OK")
    for _ in range(3):
        assert await get(client, params) == (200, "DUP")
    assert await balance(client, user) == "5"
    assert await event_count(pool, provider_ref=tx) == 1
    assert (await last_log(pool))["outcome"] == "duplicate"


async def test_reversal_subtracts_and_is_its_own_event(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "8.25")) == (200, "OK")
    assert await get(client, medioot(user, tx, "8.25", status="2")) == (200, "OK")
    assert await get(client, medioot(user, tx, "8.25", status="2")) == (200, "DUP")
    assert await balance(client, user) == "0.00"
    assert await event_count(pool, provider_ref=tx) == 2


async def test_reversal_before_credit_ends_the_same(client: Client) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "3", status="2")) == (200, "OK")
    assert await balance(client, user) == "0"  # recorded; it waits for the credit it reverses
    # The credit's signature was first used by its reversal: the two cancel out, nothing moves.
    assert await get(client, medioot(user, tx, "3")) == (200, "DUP")
    assert await balance(client, user) == "0"
    assert await get(client, medioot(user, tx, "5")) == (200, "OK")  # another amount, signed
    assert await balance(client, user) == "2"


async def test_reversal_with_new_transid_keeps_the_click_link(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, credit_tx, reversal_tx = unique(), unique("tx"), unique("tx")
    assert await get(client, medioot(user, credit_tx, "2", uuid="click-9")) == (200, "OK")
    assert await get(client, medioot(user, reversal_tx, "2", "2", uuid="click-9")) == (200, "OK")
    rows = await pool.fetch(
        "SELECT type FROM events WHERE data->>'uuid' = 'click-9' ORDER BY position"
    )
    assert [r["type"] for r in rows] == ["credited", "reversed"]
    assert await balance(client, user) == "0"


@pytest.mark.parametrize("change", ["user", "amount"])
async def test_conflict_answers_dup_and_applies_nothing(
    client: Client, pool: asyncpg.Pool, change: str
) -> None:
    user, other, tx = unique(), unique(), unique("tx")
    assert await get(client, medioot(user, tx, "4")) == (200, "OK")
    before = counter("ledger_postbacks_total", provider="medioot", outcome="conflict")
    clash = medioot(other, tx, "4") if change == "user" else medioot(user, tx, "40")
    assert await get(client, clash) == (200, "DUP")
    assert await balance(client, user) == "4"
    assert await balance(client, other) is None
    log = await last_log(pool)
    assert (log["outcome"], log["http_status"]) == ("conflict", 200)
    assert counter("ledger_postbacks_total", provider="medioot", outcome="conflict") == before + 1


async def test_same_amount_written_differently_is_a_duplicate(client: Client) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "10.5")) == (200, "OK")
    assert await get(client, medioot(user, tx, "10.50")) == (200, "DUP")
    assert await balance(client, user) == "10.5"


async def test_zero_reward_is_recorded_without_moving_the_balance(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "0")) == (200, "OK")
    assert (await last_log(pool))["outcome"] == "recorded"
    assert await balance(client, user) == "0"


async def test_bad_signature_is_403_and_credits_nothing(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    before = counter(
        "ledger_postback_signature_failures_total", provider="medioot", reason="signature"
    )
    params = medioot(user, tx, "10", secret="wrong-secret")
    status, _ = await get(client, params)
    assert status == 403
    assert await event_count(pool, provider_ref=tx) == 0
    assert await balance(client, user) is None
    log = await last_log(pool)
    assert (log["outcome"], log["http_status"]) == ("rejected", 403)
    assert "signature" not in log["params"]
    after = counter(
        "ledger_postback_signature_failures_total", provider="medioot", reason="signature"
    )
    assert after == before + 1


async def test_signature_covers_the_exact_strings(client: Client) -> None:
    user, tx = unique(), unique("tx")
    params = medioot(user, tx, "10.50")
    params["reward"] = "10.5"
    assert (await get(client, params))[0] == 403


async def test_status_flip_is_not_covered_by_the_signature(client: Client) -> None:
    # Documented weakness of the protocol (README): allowed_ips is the defence.
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "1")) == (200, "OK")
    flipped = medioot(user, tx, "1")
    flipped["status"] = "2"
    assert await get(client, flipped) == (200, "OK")


async def test_names_are_case_insensitive_and_signature_case_too(client: Client) -> None:
    user, tx = unique(), unique("tx")
    p = medioot(user, tx, "1.25")
    params = {
        "subId": p["subid"],
        "transId": p["transid"],
        "Reward": p["reward"],
        "STATUS": "1",
        "signature": p["signature"].upper(),
    }
    assert await get(client, params) == (200, "OK")
    assert await balance(client, user) == "1.25"


@pytest.mark.parametrize("missing", ["subid", "transid", "reward", "status", "signature"])
async def test_missing_parameter_is_400_naming_it(
    client: Client, pool: asyncpg.Pool, missing: str
) -> None:
    params = medioot(unique(), unique("tx"), "1")
    del params[missing]
    status, body = await get(client, params)
    assert status == 400
    assert missing in body and "\n" not in body
    assert (await last_log(pool))["outcome"] == "invalid"


@pytest.mark.parametrize(
    "reward", ["NaN", "Infinity", "-4", "abc", "1e999999", "1e3", "1000000000000000", " 1", ""]
)
async def test_malformed_reward_is_400_and_records_nothing(
    client: Client, pool: asyncpg.Pool, reward: str
) -> None:
    user, tx = unique(), unique("tx")
    status, body = await get(client, medioot(user, tx, reward))
    assert status == 400, body
    assert await event_count(pool, provider_ref=tx) == 0


@pytest.mark.parametrize("status_value", ["0", "3", "credit", "01"])
async def test_unknown_status_is_400(client: Client, status_value: str) -> None:
    status, body = await get(client, medioot(unique(), unique("tx"), "1", status=status_value))
    assert status == 400
    assert "status" in body


async def test_parameter_sent_twice_is_400(client: Client) -> None:
    p = medioot(unique(), unique("tx"), "1")
    query = "&".join(f"{k}={v}" for k, v in p.items()) + "&REWARD=1000"
    resp = await client.get(f"/postbacks/medioot?{query}")
    assert resp.status == 400
    assert "more than once" in await resp.text()


@pytest.mark.parametrize("raw", ["subid=a%00b", "subid=%FF%FE", "subid=%ED%A0%80"])
async def test_undecodable_or_nul_parameters_are_400(client: Client, raw: str) -> None:
    resp = await client.get(f"/postbacks/medioot?{raw}&transid=t&reward=1&status=1&signature=x")
    assert resp.status in (400, 403)


async def test_post_form_body(client: Client) -> None:
    user, tx = unique(), unique("tx")
    resp = await client.post("/postbacks/medioot", data=medioot(user, tx, "2.5"))
    assert (resp.status, await resp.text()) == (200, "OK")
    assert await balance(client, user) == "2.5"


async def test_post_json_body_keeps_numbers_exact(client: Client) -> None:
    user, tx = unique(), unique("tx")
    signature = helpers.md5(user + tx + "10.50" + MEDIOOT_SECRET)
    body = (
        f'{{"subid": "{user}", "transid": "{tx}", "reward": 10.50, "status": 1,'
        f' "signature": "{signature}"}}'
    )
    resp = await client.post(
        "/postbacks/medioot", data=body, headers={"Content-Type": "application/json"}
    )
    assert (resp.status, await resp.text()) == (200, "OK")
    assert await balance(client, user) == "10.50"


@pytest.mark.parametrize(
    ("ctype", "body"),
    [("application/json", "[1, 2]"), ("application/json", "{bad"), ("text/csv", "a,b")],
)
async def test_unusable_post_bodies_are_400(client: Client, ctype: str, body: str) -> None:
    resp = await client.post("/postbacks/medioot", data=body, headers={"Content-Type": ctype})
    assert resp.status == 400


async def test_body_over_the_limit_is_413(client: Client, pool: asyncpg.Pool) -> None:
    resp = await client.post(
        "/postbacks/medioot", data="x" * 5000, headers={"Content-Type": "text/plain"}
    )
    assert resp.status == 413
    log = await last_log(pool)
    assert (log["outcome"], log["http_status"]) == ("invalid", 413)


async def test_unknown_provider_and_method(client: Client) -> None:
    assert (await client.get("/postbacks/nope", params={"a": "1"})).status == 404
    assert (await client.get("/postbacks/medioot/some-token")).status == 404
    assert (await client.put("/postbacks/medioot")).status == 405


async def test_logs_carry_request_ids_and_never_secrets(client: Client) -> None:
    params = medioot(unique(), unique("tx"), "1")
    bad = medioot(unique(), unique("tx"), "1", secret="other")
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await get(client, params)
        await get(client, bad)
    text = repr(logs)
    for secret in (MEDIOOT_SECRET, params["signature"], bad["signature"]):
        assert secret not in text
    assert logs and all("request_id" in entry for entry in logs)


@pytest.fixture
def allowlisted(database_url: str) -> Any:
    return helpers.settings(
        database_url,
        server={"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]},
        providers=[
            {
                "name": "medioot",
                "protocol": "medioot",
                "secret": MEDIOOT_SECRET,
                "allowed_ips": ["203.0.113.7", "198.51.100.0/24"],
            }
        ],
    )


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        (None, 403),  # the peer itself (127.0.0.1) is not allowed
        ("203.0.113.7", 200),
        ("198.51.100.20, 10.1.1.1", 200),  # a second trusted proxy hop is skipped
        ("203.0.113.7, 6.6.6.6", 403),  # right-most untrusted hop decides
        ("6.6.6.6, 203.0.113.7", 200),  # what the client wrote on the left proves nothing
        ("not-an-ip", 403),
    ],
)
async def test_allowed_ips_behind_a_trusted_proxy(
    aiohttp_client: Any, allowlisted: Any, forwarded: str | None, expected: int
) -> None:
    client = await aiohttp_client(create_app(allowlisted))
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    before = counter(
        "ledger_postback_signature_failures_total", provider="medioot", reason="source_ip"
    )
    resp = await client.get(
        "/postbacks/medioot", params=medioot(unique(), unique("tx"), "1"), headers=headers
    )
    assert resp.status == expected
    after = counter(
        "ledger_postback_signature_failures_total", provider="medioot", reason="source_ip"
    )
    assert after == before + (1 if expected == 403 else 0)


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    aiohttp_client: Any, database_url: str
) -> None:
    untrusted = helpers.settings(
        database_url,
        providers=[
            {
                "name": "medioot",
                "protocol": "medioot",
                "secret": MEDIOOT_SECRET,
                "allowed_ips": ["203.0.113.7"],
            }
        ],
    )
    client = await aiohttp_client(create_app(untrusted))
    resp = await client.get(
        "/postbacks/medioot",
        params=medioot(unique(), unique("tx"), "1"),
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert resp.status == 403


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.sampled_from(["subid", "transid", "reward", "status", "signature", "uuid", "x"]),
        st.text(max_size=40),
        max_size=6,
    )
)
async def test_random_parameters_never_get_a_500(client: Client, params: dict[str, str]) -> None:
    resp = await client.get("/postbacks/medioot", params=params)
    assert resp.status in (200, 400, 403)
    resp = await client.post("/postbacks/medioot", data=params)
    assert resp.status in (200, 400, 403)
