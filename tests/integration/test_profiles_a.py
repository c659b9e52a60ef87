"""The built-in profiles of Tapjoy, ironSource, BitLabs, ayeT-Studios, Pollfish and Lootably,
through HTTP against real PostgreSQL.

Every postback is signed here the way the wall's own documentation says, with hashlib / hmac,
never with the service's code; where a document gives an example (BitLabs' URL, secret and hash;
ayeT's sorted string; Pollfish's signed string; the test vectors of Tapjoy, ironSource and
Lootably computed from their documented recipes) the example itself is asserted first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from service.app import create_app
from service.settings import Settings
from tests import helpers
from tests.helpers import AUTH, unique

Client = TestClient[web.Request, web.Application]

LOCAL = ["127.0.0.1/32", "::1/128"]  # the test client's address, for walls that publish theirs

TAPJOY_SECRET = "test-tapjoy-currency-secret"
IRONSOURCE_SECRET = "test-ironsource-private-key"
AYET_SECRET = "test-ayet-publisher-api-key"
POLLFISH_SECRET = "test-pollfish-secret-key"
LOOTABLY_SECRET = "test-lootably-postback-secret"

# BitLabs' documented example (securing-callbacks-through-hashing): reproduced exactly below.
BITLABS_PUBLIC = "https://publisher.com"
BITLABS_SECRET = "JLOIAUNMHFli7ZJOQVEzm98rzqnm9"
BITLABS_DOC_URL = "https://publisher.com/complete?uid=8cc877ee-af19-488d-b28d-216fb866b996&val=500"
BITLABS_DOC_HASH = "dbcd6bb8ca677344592842a52b4fca9bec36cd4b"

# ayeT-Studios' worked example (hmac-security-hash-optional) and its computed HMAC.
AYET_DOC_KEY = "9f2228fea0d8e7ce10b2ac36053db14c"
AYET_DOC_QUERY = (
    "transaction_id=8ee08f32ae611231b0a49d1bd66e9bf193132561&amount=0.10&payout=1.50"
    "&user_id=testuser123456&click_id=1234abcd5678021"
)
AYET_DOC_SORTED = (
    "amount=0.10&click_id=1234abcd5678021&payout=1.50"
    "&transaction_id=8ee08f32ae611231b0a49d1bd66e9bf193132561&user_id=testuser123456"
)
AYET_DOC_HASH = "3191f052846df1beee6c1d42030fee7448ff8fc47a417bf714c2e0a1308fc010"
AYET_PUBLISHED = "51.79.101.241"  # on ayeT's published list

# Pollfish's documented example (s2s.md 1.7): the signed string (its secret is not disclosed).
POLLFISH_DOC = {
    "device_id": "my-device-id",
    "cpa": "30",
    "timestamp": "1463152452308",
    "tx_id": "08f31d41d800cc7a0beb7eb4897639a8ba7fd7db",
}
POLLFISH_DOC_SIGNED = "30:my-device-id:1463152452308:08f31d41d800cc7a0beb7eb4897639a8ba7fd7db"

# Computed test vectors (the research's [COMPUTED] entries).
TAPJOY_VECTOR = ("1", "42", "50", "secret", "da221979ce1dbc2fcb20ae8b699f9e7b")
IRONSOURCE_VECTOR = ("123123", "eventId", "userId", "10", "supersecret")
IRONSOURCE_VECTOR_HASH = "9a9232cf5155cb0226cc1cb777cd926f"
LOOTABLY_VECTOR = (
    "some userID",
    "some ip",
    "0.01",
    "1",
    "j28eh8ahjsd2hjq8ashd829qyha8sdh2qha8sdhy",
)
LOOTABLY_VECTOR_HASH = "523e0b07f3d46a5bd4b2c63d90871141c9b0b2e51739d78874082a363ef7d2e0"


@pytest.fixture(scope="module")
def profiles_settings(database_url: str) -> Settings:
    providers: list[dict[str, Any]] = [
        {"name": "tapjoy", "protocol": "tapjoy", "secret": TAPJOY_SECRET},
        {"name": "tapjoy-vector", "protocol": "tapjoy", "secret": TAPJOY_VECTOR[3]},
        {
            "name": "ironsource",
            "protocol": "ironsource",
            "secret": IRONSOURCE_SECRET,
            "allowed_ips": LOCAL,
        },
        {
            "name": "ironsource-vector",
            "protocol": "ironsource",
            "secret": IRONSOURCE_VECTOR[4],
            "allowed_ips": LOCAL,
        },
        # The profile's own published addresses, which the test client is not among.
        {"name": "ironsource-published", "protocol": "ironsource", "secret": IRONSOURCE_SECRET},
        {"name": "bitlabs", "protocol": "bitlabs", "secret": BITLABS_SECRET},
        {
            "name": "ayetstudios",
            "protocol": "ayetstudios",
            "secret": AYET_SECRET,
            "allowed_ips": LOCAL,
        },
        {"name": "ayet-published", "protocol": "ayetstudios", "secret": AYET_SECRET},
        {
            # The documented example's own parameter names, as overrides of the built-in.
            "name": "ayet-doc",
            "protocol": "ayetstudios",
            "secret": AYET_DOC_KEY,
            "allowed_ips": LOCAL,
            "profile": {
                "user": "user_id",
                "amount": "amount",
                "transaction": "transaction_id",
                "status": "",
                "credit": [],
                "reversal": [],
                "params": ["payout", "click_id"],
            },
        },
        {"name": "pollfish", "protocol": "pollfish", "secret": POLLFISH_SECRET},
        {
            "name": "pollfish-doc",
            "protocol": "pollfish",
            "secret": POLLFISH_SECRET,
            "profile": {
                "user": "device_id",
                "amount": "cpa",
                "params": ["timestamp"],
                "required": ["timestamp"],
                "signature": {"template": "{cpa}:{device_id}:{timestamp}:{tx_id}"},
            },
        },
        {"name": "lootably", "protocol": "lootably", "secret": LOOTABLY_SECRET},
        {"name": "lootably-vector", "protocol": "lootably", "secret": LOOTABLY_VECTOR[4]},
    ]
    return helpers.settings(
        database_url,
        server={"public_url": BITLABS_PUBLIC, "trusted_proxies": LOCAL},
        providers=providers,
    )


@pytest.fixture
async def client(aiohttp_client: Any, profiles_settings: Settings) -> Client:
    result: Client = await aiohttp_client(create_app(profiles_settings))
    return result


# --- what the walls send, signed as their documents say ------------------------------------------


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hmac_hex(key: str, message: str, algorithm: str) -> str:
    return hmac.new(key.encode(), message.encode(), algorithm).hexdigest()


def tapjoy(
    tx: str, snuid: str, currency: str, secret: str = TAPJOY_SECRET, **extra: str
) -> dict[str, str]:
    """Tapjoy's fixed names; verifier = md5(id:snuid:currency:secret_key)."""
    verifier = md5_hex(f"{tx}:{snuid}:{currency}:{secret}")
    return {"snuid": snuid, "currency": currency, "id": tx, "verifier": verifier, **extra}


def ironsource(
    user: str,
    rewards: str,
    event: str,
    timestamp: str = "202611291200",
    secret: str = IRONSOURCE_SECRET,
    **extra: str,
) -> dict[str, str]:
    """The profile's names; signature = md5(timestamp . eventId . userId . rewards . key) over
    the decoded user id."""
    signature = md5_hex(timestamp + event + user + rewards + secret)
    return {
        "user_id": user,
        "rewards": rewards,
        "event_id": event,
        "item_name": "coins",
        "timestamp": timestamp,
        "signature": signature,
        **extra,
    }


def bitlabs_path(query: str, provider: str = "bitlabs", secret: str = BITLABS_SECRET) -> str:
    """The path and query BitLabs calls: the whole URL (public scheme and host) HMAC-SHA1'd,
    appended as the last parameter `&hash=`."""
    path = f"/postbacks/{provider}?{query}"
    return f"{path}&hash={hmac_hex(secret, BITLABS_PUBLIC + path, 'sha1')}"


def php_build_query(pairs: list[tuple[str, str]]) -> str:
    """PHP http_build_query: urlencode()d names and values (space as '+')."""
    return "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in pairs)


def ayet_hash(pairs: list[tuple[str, str]], key: str = AYET_SECRET) -> str:
    """ksort($params); hash_hmac('sha256', http_build_query($params), $apiKey)."""
    return hmac_hex(key, php_build_query(sorted(pairs)), "sha256")


def ayet(
    user: str, amount: str, tx: str, chargeback: str = "0", **extra: str
) -> list[tuple[str, str]]:
    """The profile's URL as ayeT fills it in, in the URL's own order (not sorted)."""
    return [
        ("transaction_id", tx),
        ("external_identifier", user),
        ("currency_amount", amount),
        ("payout_usd", "0.36"),
        ("is_chargeback", chargeback),
        ("placement_identifier", "12"),
        ("adslot_id", "3"),
        ("chargeback_reason", "Fraud detected" if chargeback == "1" else ""),
        *extra.items(),
    ]


def pollfish_signature(placeholders: dict[str, str], secret: str = POLLFISH_SECRET) -> str:
    """Base64 HMAC-SHA1 of the placeholders' values sorted by placeholder name, joined by ':'."""
    message = pollfish_message(placeholders)
    return base64.b64encode(hmac.new(secret.encode(), message.encode(), "sha1").digest()).decode()


def pollfish_message(placeholders: dict[str, str]) -> str:
    return ":".join(placeholders[name] for name in sorted(placeholders))


def pollfish(
    user: str, reward: str, tx: str, cpa: str = "45", secret: str = POLLFISH_SECRET
) -> dict[str, str]:
    placeholders = {
        "request_uuid": user,
        "tx_id": tx,
        "reward_value": reward,
        "cpa": cpa,
        "timestamp": "1764417600000",
    }
    return {**placeholders, "signature": pollfish_signature(placeholders, secret)}


def pollfish_query(params: dict[str, str], debug: bool = False) -> str:
    """The query as Pollfish sends it: the Base64 signature URL-encoded, debug=true appended."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return query + "&debug=true" if debug else query


def lootably(
    user: str,
    reward: str,
    tx: str,
    status: str = "1",
    ip: str = "203.0.113.7",
    revenue: str = "0.5000",
    secret: str = LOOTABLY_SECRET,
) -> dict[str, str]:
    """sha256(userID + ip + revenue + currencyReward + postbackSecret), no separators."""
    return {
        "user_id": user,
        "transaction_id": tx,
        "ip": ip,
        "revenue": revenue,
        "currency_reward": reward,
        "status": status,
        "offer_id": "off-1",
        "offer_name": "Test offer",
        "goal_id": "g-1",
        "hash": sha256_hex(user + ip + revenue + reward + secret),
    }


# --- requests and checks -------------------------------------------------------------------------


async def get(
    client: Client,
    provider: str,
    params: dict[str, str] | None = None,
    *,
    query: str | None = None,
    suffix: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """GET /postbacks/<provider><suffix> with `params` urlencoded, or `query` sent verbatim."""
    raw = query if query is not None else urlencode(params or {})
    url = URL(f"/postbacks/{provider}{suffix}?{raw}", encoded=True)
    resp = await client.get(url, headers=headers)
    return resp.status, await resp.text()


async def get_path(client: Client, path: str) -> tuple[int, str]:
    resp = await client.get(URL(path, encoded=True))
    return resp.status, await resp.text()


async def balance(client: Client, user: str) -> Decimal | None:
    resp = await client.get(URL(f"/v1/wallets/{quote(user, safe='')}", encoded=True), headers=AUTH)
    if resp.status == 404:
        return None
    body: dict[str, Any] = await resp.json()
    return Decimal(str(body["balance"]))


async def events(pool: asyncpg.Pool, provider: str, ref: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM events WHERE provider = $1 AND provider_ref = $2 ORDER BY position",
        provider,
        ref,
    )
    return rows


async def nothing_for(client: Client, pool: asyncpg.Pool, provider: str, user: str) -> None:
    assert await balance(client, user) in (None, Decimal(0))
    n = await pool.fetchval(
        "SELECT count(*) FROM events WHERE provider = $1 AND user_id = $2", provider, user
    )
    assert n == 0


# --- Tapjoy --------------------------------------------------------------------------------------


async def test_tapjoy_vector_credits(client: Client) -> None:
    tx, snuid, currency, secret, verifier = TAPJOY_VECTOR
    assert md5_hex(f"{tx}:{snuid}:{currency}:{secret}") == verifier
    params = {"snuid": snuid, "currency": currency, "mac_address": "00-16-41-34-2C-A6"}
    params |= {"id": tx, "verifier": verifier}
    assert await get(client, "tapjoy-vector", params) == (200, "OK")
    assert await balance(client, snuid) == Decimal(50)


async def test_tapjoy_credit_duplicate_and_forgery(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("req")
    params = tapjoy(tx, user, "50", mac_address="00-16-41-34-2C-A6")
    assert await get(client, "tapjoy", params) == (200, "OK")
    assert await balance(client, user) == Decimal(50)
    assert await get(client, "tapjoy", params) == (200, "OK")  # a retry: nothing more
    assert await balance(client, user) == Decimal(50)
    assert len(await events(pool, "tapjoy", tx)) == 1

    forged = tapjoy(unique("req"), user, "5000", secret="not-the-secret")
    status, _ = await get(client, "tapjoy", forged)
    assert status == 403  # Tapjoy stops retrying on 403
    changed = {**tapjoy(unique("req"), user, "50"), "currency": "5000"}
    assert (await get(client, "tapjoy", changed))[0] == 403
    assert await balance(client, user) == Decimal(50)


@pytest.mark.parametrize("amount", ["abc", "-50", "1e3", ""])
async def test_tapjoy_bad_amount_credits_nothing(
    client: Client, pool: asyncpg.Pool, amount: str
) -> None:
    user = unique()
    status, _ = await get(client, "tapjoy", tapjoy(unique("req"), user, amount))
    assert status in (400, 403)
    await nothing_for(client, pool, "tapjoy", user)


async def test_tapjoy_bad_amount_answers_403_so_tapjoy_stops_retrying(client: Client) -> None:
    # Tapjoy retries anything but 200 and 403 every 5 minutes for 4 days.
    status, _ = await get(client, "tapjoy", tapjoy(unique("req"), unique(), "abc"))
    assert status == 403


async def test_tapjoy_without_verifier_is_refused(client: Client, pool: asyncpg.Pool) -> None:
    user = unique()
    params = tapjoy(unique("req"), user, "50")
    del params["verifier"]
    assert (await get(client, "tapjoy", params))[0] == 403
    await nothing_for(client, pool, "tapjoy", user)


# --- ironSource ----------------------------------------------------------------------------------


async def test_ironsource_vector_credits(client: Client) -> None:
    timestamp, event, user, rewards, key = IRONSOURCE_VECTOR
    assert md5_hex(timestamp + event + user + rewards + key) == IRONSOURCE_VECTOR_HASH
    params = ironsource(user, rewards, event, timestamp, secret=key)
    assert params["signature"] == IRONSOURCE_VECTOR_HASH
    assert await get(client, "ironsource-vector", params) == (200, "eventId:OK")
    assert await balance(client, user) == Decimal(10)


async def test_ironsource_credit_answers_event_ok_and_duplicate(
    client: Client, pool: asyncpg.Pool
) -> None:
    # [USER_ID] arrives URL-encoded ("123%40abc.com"); the signature is over the decoded value.
    user, event = f"{unique()}@abc.com", unique("ev")
    params = ironsource(user, "25", event)
    assert "%40abc.com" in urlencode(params)
    assert await get(client, "ironsource", params) == (200, f"{event}:OK")
    assert await balance(client, user) == Decimal(25)
    assert await get(client, "ironsource", params) == (200, f"{event}:OK")
    assert await balance(client, user) == Decimal(25)
    assert len(await events(pool, "ironsource", event)) == 1


async def test_ironsource_forgery_is_refused(client: Client, pool: asyncpg.Pool) -> None:
    user = unique()
    forged = ironsource(user, "25", unique("ev"), secret="not-the-key")
    status, body = await get(client, "ironsource", forged)
    assert status == 403 and not body.endswith(":OK")
    tampered = {**ironsource(user, "25", unique("ev")), "rewards": "2500"}
    assert (await get(client, "ironsource", tampered))[0] == 403
    await nothing_for(client, pool, "ironsource", user)


async def test_ironsource_negative_callback_takes_the_reward_back(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, event = unique(), unique("ev")
    assert await get(client, "ironsource", ironsource(user, "40", event)) == (200, f"{event}:OK")
    negative = ironsource(user, "40", event, negativeCallback="true")
    assert await get(client, "ironsource", negative) == (200, f"{event}:OK")
    assert await balance(client, user) == Decimal(0)
    assert await get(client, "ironsource", negative) == (200, f"{event}:OK")  # a retry
    assert await balance(client, user) == Decimal(0)
    assert [r["type"] for r in await events(pool, "ironsource", event)] == [
        "credited",
        "reversed",
    ]


async def test_ironsource_negative_rewards_reverse_too(client: Client) -> None:
    user, event = unique(), unique("ev")
    assert (await get(client, "ironsource", ironsource(user, "40", event)))[0] == 200
    negative = ironsource(user, "-40", event, negativeCallback="true")
    assert await get(client, "ironsource", negative) == (200, f"{event}:OK")
    assert await balance(client, user) == Decimal(0)


@pytest.mark.parametrize("amount", ["ten", "1e3", "1.5.0"])
async def test_ironsource_bad_amount(client: Client, pool: asyncpg.Pool, amount: str) -> None:
    user = unique()
    status, _ = await get(client, "ironsource", ironsource(user, amount, unique("ev")))
    assert status == 400
    await nothing_for(client, pool, "ironsource", user)


async def test_ironsource_published_addresses_refuse_others(
    client: Client, pool: asyncpg.Pool
) -> None:
    user = unique()
    status, _ = await get(client, "ironsource-published", ironsource(user, "5", unique("ev")))
    assert status == 403
    await nothing_for(client, pool, "ironsource-published", user)


# --- BitLabs -------------------------------------------------------------------------------------


def test_bitlabs_documented_example_reproduces() -> None:
    assert hmac_hex(BITLABS_SECRET, BITLABS_DOC_URL, "sha1") == BITLABS_DOC_HASH
    sent = f"{BITLABS_DOC_URL}&hash={BITLABS_DOC_HASH}"
    assert sent.split("&hash=")[0] == BITLABS_DOC_URL  # the official samples' split


async def test_bitlabs_documented_values_credit(client: Client, pool: asyncpg.Pool) -> None:
    # The example's host, secret and parameters, on this service's path (plus the profile's tx).
    tx = unique("tx")
    query = BITLABS_DOC_URL.split("?", 1)[1] + f"&tx={tx}"
    assert await get_path(client, bitlabs_path(query)) == (200, "OK")
    assert await balance(client, "8cc877ee-af19-488d-b28d-216fb866b996") == Decimal(500)
    assert len(await events(pool, "bitlabs", tx)) == 1


async def test_bitlabs_credit_duplicate_forgery(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    query = f"uid={user}&tx={tx}&val=12.50&usd=0.125&ref=&offer_id=77"
    path = bitlabs_path(query)
    assert await get_path(client, path) == (200, "OK")
    assert await get_path(client, path) == (200, "OK")
    assert await balance(client, user) == Decimal("12.50")
    assert len(await events(pool, "bitlabs", tx)) == 1

    # Any change to the URL breaks the hash: the amount, a parameter's order, another secret.
    other = unique()
    forged = bitlabs_path(f"uid={other}&tx={unique('tx')}&val=12.50", secret="not-the-secret")
    assert (await get_path(client, forged))[0] == 403
    genuine = bitlabs_path(f"uid={other}&tx={unique('tx')}&val=1")
    assert (await get_path(client, genuine.replace("&val=1&", "&val=1000&")))[0] == 403
    # Signed for another host: the hash covers scheme and host.
    tx2 = unique("tx")
    path2 = f"/postbacks/bitlabs?uid={other}&tx={tx2}&val=1"
    elsewhere = hmac_hex(BITLABS_SECRET, "https://attacker.example" + path2, "sha1")
    assert (await get_path(client, f"{path2}&hash={elsewhere}"))[0] == 403
    await nothing_for(client, pool, "bitlabs", other)


async def test_bitlabs_hashes_the_url_as_sent(client: Client) -> None:
    # "Do not encode/decode the URL before generating the hash": the percent-encoding as sent.
    user, tx = f"{unique()}@example.com", unique("tx")
    query = f"uid={quote(user, safe='')}&tx={tx}&val=7.25&offer_id=Offer%20One"
    assert "%40" in query
    assert await get_path(client, bitlabs_path(query)) == (200, "OK")
    assert await balance(client, user) == Decimal("7.25")


async def test_bitlabs_negative_value_reverses(client: Client) -> None:
    user, tx = unique(), unique("tx")
    assert (await get_path(client, bitlabs_path(f"uid={user}&tx={tx}&val=300")))[0] == 200
    reconciled = bitlabs_path(f"uid={user}&tx={tx}&val=-300")
    assert await get_path(client, reconciled) == (200, "OK")
    assert await balance(client, user) == Decimal(0)


async def test_bitlabs_reconciliation_by_ref_reverses(client: Client) -> None:
    user, tx = unique(), "o" + unique("tx")
    assert (await get_path(client, bitlabs_path(f"uid={user}&tx={tx}&val=300")))[0] == 200
    reconciled = bitlabs_path(f"uid={user}&tx=or{tx[1:]}&val=-300&ref={tx}")
    assert await get_path(client, reconciled) == (200, "OK")
    assert await balance(client, user) == Decimal(0)


async def test_bitlabs_tester_debug_moves_nothing(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    assert await get_path(client, bitlabs_path(f"uid={user}&tx={tx}&val=50&debug=true")) == (
        200,
        "OK",
    )
    assert await balance(client, user) in (None, Decimal(0))
    rows = await events(pool, "bitlabs", tx)
    assert len(rows) == 1 and rows[0]["test"] is True


@pytest.mark.parametrize("amount", ["abc", "1e3", "--5"])
async def test_bitlabs_bad_amount(client: Client, pool: asyncpg.Pool, amount: str) -> None:
    user = unique()
    status, _ = await get_path(client, bitlabs_path(f"uid={user}&tx={unique('tx')}&val={amount}"))
    assert status == 400
    await nothing_for(client, pool, "bitlabs", user)


# --- ayeT-Studios --------------------------------------------------------------------------------


def test_ayet_documented_example() -> None:
    pairs = [(k, v) for k, _, v in (p.partition("=") for p in AYET_DOC_QUERY.split("&"))]
    assert php_build_query(sorted(pairs)) == AYET_DOC_SORTED
    assert hmac_hex(AYET_DOC_KEY, AYET_DOC_SORTED, "sha256") == AYET_DOC_HASH


async def test_ayet_documented_example_credits(client: Client) -> None:
    headers = {"X-Ayetstudios-Security-Hash": AYET_DOC_HASH}
    assert await get(client, "ayet-doc", query=AYET_DOC_QUERY, headers=headers) == (200, "OK")
    assert await balance(client, "testuser123456") == Decimal("0.10")


async def test_ayet_credit_duplicate_forgery(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    pairs = ayet(user, "360", tx, offer_name="Coin Master")  # a static parameter is signed too
    query = php_build_query(pairs)
    assert "Coin+Master" in query
    headers = {"X-Ayetstudios-Security-Hash": ayet_hash(pairs)}
    assert await get(client, "ayetstudios", query=query, headers=headers) == (200, "OK")
    assert await get(client, "ayetstudios", query=query, headers=headers) == (200, "OK")
    assert await balance(client, user) == Decimal(360)
    assert len(await events(pool, "ayetstudios", tx)) == 1

    other = unique()
    pairs = ayet(other, "360", unique("tx"))
    forged = {"X-Ayetstudios-Security-Hash": ayet_hash(pairs, key="not-the-key")}
    query = php_build_query(pairs)
    assert (await get(client, "ayetstudios", query=query, headers=forged))[0] == 403
    assert (await get(client, "ayetstudios", query=query))[0] == 403  # no header at all
    signed = {"X-Ayetstudios-Security-Hash": ayet_hash(pairs)}
    tampered = query.replace("currency_amount=360", "currency_amount=36000")
    assert (await get(client, "ayetstudios", query=tampered, headers=signed))[0] == 403
    await nothing_for(client, pool, "ayetstudios", other)


async def test_ayet_reversal_r_prefix_negative_amount(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    pairs = ayet(user, "360", tx)
    headers = {"X-Ayetstudios-Security-Hash": ayet_hash(pairs)}
    assert await get(client, "ayetstudios", query=php_build_query(pairs), headers=headers) == (
        200,
        "OK",
    )
    back = ayet(user, "-360", f"r-{tx}", chargeback="1")
    headers = {"X-Ayetstudios-Security-Hash": ayet_hash(back)}
    for _ in range(2):  # and its resend
        assert await get(client, "ayetstudios", query=php_build_query(back), headers=headers) == (
            200,
            "OK",
        )
    assert await balance(client, user) == Decimal(0)
    keys = await pool.fetch(
        "SELECT key, type FROM events WHERE provider = 'ayetstudios' AND user_id = $1"
        " ORDER BY position",
        user,
    )
    assert [(r["key"], r["type"]) for r in keys] == [
        (f"credit:{tx}", "credited"),
        (f"reversal:{tx}", "reversed"),
    ]


@pytest.mark.parametrize("amount", ["abc", "1e3", "0x10"])
async def test_ayet_bad_amount(client: Client, pool: asyncpg.Pool, amount: str) -> None:
    user = unique()
    pairs = ayet(user, amount, unique("tx"))
    headers = {"X-Ayetstudios-Security-Hash": ayet_hash(pairs)}
    status, _ = await get(client, "ayetstudios", query=php_build_query(pairs), headers=headers)
    assert status == 400
    await nothing_for(client, pool, "ayetstudios", user)


async def test_ayet_published_addresses(client: Client, pool: asyncpg.Pool) -> None:
    user = unique()
    pairs = ayet(user, "7", unique("tx"))
    headers = {"X-Ayetstudios-Security-Hash": ayet_hash(pairs)}
    query = php_build_query(pairs)
    assert (await get(client, "ayet-published", query=query, headers=headers))[0] == 403
    await nothing_for(client, pool, "ayet-published", user)
    # Through a trusted proxy, from one of ayeT's published servers.
    via = {**headers, "X-Forwarded-For": AYET_PUBLISHED}
    assert await get(client, "ayet-published", query=query, headers=via) == (200, "OK")
    assert await balance(client, user) == Decimal(7)


# --- Pollfish ------------------------------------------------------------------------------------


def test_pollfish_documented_signed_string() -> None:
    assert pollfish_message(POLLFISH_DOC) == POLLFISH_DOC_SIGNED


async def test_pollfish_documented_example_credits(client: Client) -> None:
    placeholders = dict(POLLFISH_DOC)
    params = {**placeholders, "signature": pollfish_signature(placeholders)}
    status = await get(client, "pollfish-doc", query=pollfish_query(params))
    assert status == (200, "OK")
    assert await balance(client, "my-device-id") == Decimal(30)


async def test_pollfish_credit_duplicate_forgery(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    params = pollfish(user, "120", tx)
    assert await get(client, "pollfish", query=pollfish_query(params)) == (200, "OK")
    assert await get(client, "pollfish", query=pollfish_query(params)) == (200, "OK")
    assert await balance(client, user) == Decimal(120)
    assert len(await events(pool, "pollfish", tx)) == 1

    other = unique()
    forged = pollfish(other, "120", unique("tx"), secret="not-the-secret")
    assert (await get(client, "pollfish", query=pollfish_query(forged)))[0] == 403
    tampered = {**pollfish(other, "1", unique("tx")), "reward_value": "1000"}
    assert (await get(client, "pollfish", query=pollfish_query(tampered)))[0] == 403
    await nothing_for(client, pool, "pollfish", other)


async def test_pollfish_signature_with_url_special_characters(client: Client) -> None:
    # Find a transaction whose Base64 signature has '+' and '/': both must arrive URL-encoded.
    user = unique()
    for n in range(500):
        params = pollfish(user, "3", f"{user}-tx-{n}")
        if "+" in params["signature"] and "/" in params["signature"]:
            break
    query = pollfish_query(params)
    assert "%2B" in query and "%2F" in query
    assert await get(client, "pollfish", query=query) == (200, "OK")
    assert await balance(client, user) == Decimal(3)


async def test_pollfish_reconciliation_endpoint_reverses(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, tx = unique(), unique("tx")
    params = pollfish(user, "80", tx)
    assert await get(client, "pollfish", query=pollfish_query(params)) == (200, "OK")
    for _ in range(2):
        assert await get(client, "pollfish", query=pollfish_query(params), suffix="/reversal") == (
            200,
            "OK",
        )
    assert await balance(client, user) == Decimal(0)
    assert [r["type"] for r in await events(pool, "pollfish", tx)] == ["credited", "reversed"]


async def test_pollfish_debug_moves_nothing(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    params = pollfish(user, "80", tx)
    assert await get(client, "pollfish", query=pollfish_query(params, debug=True)) == (200, "OK")
    assert await balance(client, user) in (None, Decimal(0))
    rows = await events(pool, "pollfish", tx)
    assert len(rows) == 1 and rows[0]["test"] is True


@pytest.mark.parametrize("amount", ["abc", "-80", "1e3"])
async def test_pollfish_bad_amount(client: Client, pool: asyncpg.Pool, amount: str) -> None:
    user = unique()
    params = pollfish(user, amount, unique("tx"))
    assert (await get(client, "pollfish", query=pollfish_query(params)))[0] == 400
    await nothing_for(client, pool, "pollfish", user)


# --- Lootably ------------------------------------------------------------------------------------


async def test_lootably_vector_credits(client: Client) -> None:
    user, ip, revenue, reward, secret = LOOTABLY_VECTOR
    assert sha256_hex(user + ip + revenue + reward + secret) == LOOTABLY_VECTOR_HASH
    params = lootably(user, reward, unique("tx"), ip=ip, revenue=revenue, secret=secret)
    assert params["hash"] == LOOTABLY_VECTOR_HASH
    assert await get(client, "lootably-vector", params) == (200, "1")
    assert await balance(client, user) == Decimal(1)


async def test_lootably_credit_duplicate_forgery(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    params = lootably(user, "100.00", tx)
    assert await get(client, "lootably", params) == (200, "1")
    assert await get(client, "lootably", params) == (200, "1")
    assert await balance(client, user) == Decimal("100.00")
    assert len(await events(pool, "lootably", tx)) == 1

    other = unique()
    forged = lootably(other, "100.00", unique("tx"), secret="not-the-secret")
    assert (await get(client, "lootably", forged))[0] == 403
    tampered = {**lootably(other, "1", unique("tx")), "currency_reward": "1000"}
    assert (await get(client, "lootably", tampered))[0] == 403
    await nothing_for(client, pool, "lootably", other)


async def test_lootably_status_zero_reverses(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, "lootably", lootably(user, "100.00", tx)) == (200, "1")
    assert await get(client, "lootably", lootably(user, "100.00", tx, status="0")) == (200, "1")
    assert await get(client, "lootably", lootably(user, "100.00", tx, status="0")) == (200, "1")
    assert await balance(client, user) == Decimal(0)
    assert [r["type"] for r in await events(pool, "lootably", tx)] == ["credited", "reversed"]


@pytest.mark.parametrize("amount", ["abc", "-100", "1e3"])
async def test_lootably_bad_amount(client: Client, pool: asyncpg.Pool, amount: str) -> None:
    user = unique()
    assert (await get(client, "lootably", lootably(user, amount, unique("tx"))))[0] == 400
    await nothing_for(client, pool, "lootably", user)


async def test_lootably_unknown_status_credits_nothing(client: Client, pool: asyncpg.Pool) -> None:
    user = unique()
    assert (await get(client, "lootably", lootably(user, "5", unique("tx"), status="7")))[0] == 400
    await nothing_for(client, pool, "lootably", user)


# --- setup and simulate ------------------------------------------------------------------------

CLI_WALLS = ("tapjoy", "ironsource", "bitlabs", "ayetstudios", "pollfish", "lootably")


def walls_config(tmp_path: Path, settings: Settings) -> str:
    """The six walls as an operator would configure them (JSON strings are TOML strings)."""
    lines = [f"[server]\npublic_url = {json.dumps(BITLABS_PUBLIC)}\n"]
    for provider in settings.providers:
        if provider.name not in CLI_WALLS:
            continue
        lines += [
            "[[providers]]",
            f"name = {json.dumps(provider.name)}",
            f"protocol = {json.dumps(provider.protocol)}",
            f"secret = {json.dumps(provider.secret)}",
        ]
        if provider.allowed_ips:
            lines.append(f"allowed_ips = {json.dumps(provider.allowed_ips)}")
        lines.append("")
    path = tmp_path / "walls-a.toml"
    path.write_text("\n".join(lines))
    return str(path)


async def run(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LEDGER_CONFIG")}
    return await helpers.run_cli(*args, env=env, limit=60)


SETUP_URLS = {
    "tapjoy": "/postbacks/tapjoy",
    "ironsource": "/postbacks/ironsource?user_id=[USER_ID]&rewards=[REWARDS]"
    "&event_id=[EVENT_ID]&item_name=[ITEM_NAME]",
    "bitlabs": "/postbacks/bitlabs?uid=[%USER:UID%]&tx=[%TX%]&val=[%VALUE:CURRENCY%]"
    "&usd=[%VALUE:USD%]&ref=[%REF%]&offer_id=[%OFFER:ID%]",
    "ayetstudios": "/postbacks/ayetstudios?transaction_id={transaction_id}"
    "&external_identifier={external_identifier}&currency_amount={currency_amount}"
    "&payout_usd={payout_usd}&is_chargeback={is_chargeback}"
    "&placement_identifier={placement_identifier}&adslot_id={adslot_id}"
    "&chargeback_reason={chargeback_reason}",
    "pollfish": "/postbacks/pollfish?request_uuid=[[request_uuid]]&tx_id=[[tx_id]]"
    "&reward_value=[[reward_value]]&cpa=[[cpa]]&timestamp=[[timestamp]]"
    "&signature=[[signature]]",
    "lootably": "/postbacks/lootably?user_id={userID}&transaction_id={transactionID}&ip={ip}"
    "&revenue={revenue}&currency_reward={currencyReward}&status={status}&offer_id={offerID}"
    "&offer_name={offerName}&goal_id={goalID}&hash={hash}",
}


async def test_setup_prints_each_walls_url(tmp_path: Path, profiles_settings: Settings) -> None:
    config = walls_config(tmp_path, profiles_settings)
    base = "https://ledger.example.com"
    for name, url in SETUP_URLS.items():
        code, out, err = await run("setup", name, "--base-url", base, "--config", config)
        assert (code, err) == (0, ""), (name, out, err)
        lines = out.splitlines()
        assert lines[0] == base + url, name
        assert any(line.startswith("secret: ") and "dashboard" in line for line in lines), name
    code, out, _ = await run("setup", "pollfish", "--base-url", base, "--config", config)
    reversals = SETUP_URLS["pollfish"].replace("?", "/reversal?", 1)
    assert out.splitlines()[1] == f"reversals: {base}{reversals}"


@pytest.mark.parametrize("name", CLI_WALLS)
async def test_simulate_credits_and_reverses(
    client: Client, tmp_path: Path, profiles_settings: Settings, name: str
) -> None:
    config = walls_config(tmp_path, profiles_settings)
    url = str(client.make_url("")).rstrip("/")
    user, tx = unique(), unique("tx")
    common = ("--user", user, "--transaction", tx, "--url", url, "--config", config)
    code, out, err = await run("simulate", name, "--amount", "12.50", *common)
    assert code == 0, (out, err)
    assert await balance(client, user) == Decimal("12.50")
    if name == "tapjoy":  # no reversals
        return
    code, out, err = await run("simulate", name, "--amount", "12.50", "--reverse", *common)
    assert code == 0, (out, err)
    assert await balance(client, user) == Decimal(0)
