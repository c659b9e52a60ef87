"""Walls described by a profile (protocol custom, and the built-in kiwiwall) through HTTP against
real PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY
from yarl import URL

from service.app import create_app
from service.settings import Settings
from tests import helpers
from tests.helpers import AUTH, unique

Client = TestClient  # type: ignore[type-arg]

SECRET = "test-wall-secret-new"
OLD_SECRET = "test-wall-secret-old"
KIWI_SECRET = "test-kiwi-secret"
HMAC_SECRET = "test-hmac-secret"
PUBLIC_URL = "https://ledger.example.com"
TOKEN = "tok-0123456789abcdef"
OLD_TOKEN = "tok-old-0123456789ab"

# A Tapjoy-like wall: GET, md5 over a template with separators.
TEMPLATE_WALL: dict[str, Any] = {
    "user": "snuid",
    "transaction": "id",
    "amount": "currency",
    "status": "state",
    "credit": ["ok"],
    "reversal": ["back"],
    "test": ["test"],
    "pending": ["wait"],
    "params": ["offer_id"],
    "signature": {
        "kind": "hash",
        "algorithm": "md5",
        "template": "{id}:{snuid}:{currency}:{secret}",
        "param": "verifier",
    },
    "answers": {"duplicate": {"status": 200, "body": "DUP {transaction}"}},
}
# Unsigned amount, negative amounts reverse, hmac-sha256 in a header over the sorted query.
SORTED_WALL: dict[str, Any] = {
    "methods": ["GET", "POST"],
    "user": "uid",
    "transaction": "tx",
    "amount": "points",
    "negative_reverses": True,
    "reversal_prefix": "r-",
    "signature": {
        "kind": "hmac",
        "algorithm": "sha256",
        "over": "sorted_query",
        "encoding": "base64",
        "header": "X-Signature",
    },
}
# Reversals at their own endpoint, signature over the whole URL, behind a URL token.
URL_WALL: dict[str, Any] = {
    "user": "user",
    "transaction": "tx",
    "amount": "reward",
    "reversal_endpoint": True,
    "signature": {
        "kind": "hash",
        "algorithm": "sha1",
        "over": "url",
        "encoding": "hex",
        "param": "hash",
    },
}
# Only the user and transaction signed: a reversal takes back the whole credit.
PARTIAL_WALL: dict[str, Any] = {
    "user": "u",
    "transaction": "t",
    "amount": "a",
    "status": "s",
    "credit": ["1"],
    "reversal": ["2"],
    "signature": {"template": "{u}{t}{secret}", "param": "sig"},
}

# No signature: the URL token (either of two) and max_amount; a pending status.
UNSIGNED_WALL: dict[str, Any] = {
    "user": "user",
    "transaction": "tx",
    "amount": "amount",
    "status": "state",
    "credit": ["approved"],
    "reversal": ["rejected"],
    "pending": ["pending"],
    "signature": {"kind": "none"},
}


def settings_for(database_url: str) -> Settings:
    return helpers.settings(
        database_url,
        server={"max_body_bytes": 4096, "metrics_max_age": 0, "public_url": PUBLIC_URL},
        providers=[
            {
                "name": "tmpl",
                "protocol": "custom",
                "secrets": [SECRET, OLD_SECRET],
                "profile": TEMPLATE_WALL,
            },
            {"name": "sorted", "protocol": "custom", "secret": HMAC_SECRET, "profile": SORTED_WALL},
            {
                "name": "urlw",
                "protocol": "custom",
                "secret": SECRET,
                "url_token": TOKEN,
                "profile": URL_WALL,
            },
            {"name": "partial", "protocol": "custom", "secret": SECRET, "profile": PARTIAL_WALL},
            {
                "name": "kiwi",
                "protocol": "kiwiwall",
                "secret": KIWI_SECRET,
                "allowed_ips": ["127.0.0.1", "::1"],
            },
            {"name": "kiwi-default", "protocol": "kiwiwall", "secret": KIWI_SECRET},
            {
                "name": "tokw",
                "protocol": "custom",
                "url_tokens": [TOKEN, OLD_TOKEN],
                "max_amount": "100",
                "profile": {**UNSIGNED_WALL},
            },
            {"name": "medioot", "protocol": "medioot", "secrets": [SECRET, OLD_SECRET]},
            {
                "name": "inbrain",
                "protocol": "inbrain",
                "secrets": [SECRET, OLD_SECRET],
            },
            {
                "name": "adgate",
                "protocol": "adgate_receipts",
                "url_tokens": [TOKEN, OLD_TOKEN],
            },
        ],
    )


@pytest.fixture
async def client(aiohttp_client: Any, database_url: str) -> Client:
    return await aiohttp_client(create_app(settings_for(database_url)))  # type: ignore[no-any-return]


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def tmpl(
    user: str, tx: str, amount: str, state: str = "ok", secret: str = SECRET
) -> dict[str, str]:
    return {
        "snuid": user,
        "id": tx,
        "currency": amount,
        "state": state,
        "offer_id": "o-1",
        "verifier": md5(f"{tx}:{user}:{amount}:{secret}"),
    }


async def balance(client: Client, user: str) -> str | None:
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    if resp.status == 404:
        return None
    body: dict[str, Any] = await resp.json()
    return str(body["balance"])


async def get(client: Client, path: str, params: dict[str, str]) -> tuple[int, str]:
    resp = await client.get(path, params=params)
    return resp.status, await resp.text()


async def last_log(pool: asyncpg.Pool) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow("SELECT * FROM postback_log ORDER BY id DESC LIMIT 1")
    return row


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- a template-signed GET wall -------------------------------------------------------------------


async def test_credit_then_duplicate(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, "/postbacks/tmpl", tmpl(user, tx, "10.50")) == (200, "OK")
    assert await balance(client, user) == "10.50"
    assert await get(client, "/postbacks/tmpl", tmpl(user, tx, "10.50")) == (200, f"DUP {tx}")
    assert await balance(client, user) == "10.50"
    row = await pool.fetchrow("SELECT * FROM events WHERE provider_ref = $1", tx)
    assert (row["key"], row["type"], row["user_id"]) == (f"credit:{tx}", "credited", user)
    assert row["data"] == {"offer_id": "o-1"}
    log = await last_log(pool)
    assert log["outcome"] == "duplicate"
    assert "verifier" not in log["params"]


async def test_forged_signature_is_403(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    params = tmpl(user, tx, "10.50")
    params["currency"] = "1000"
    before = counter(
        "ledger_postback_signature_failures_total", provider="tmpl", reason="signature"
    )
    assert await get(client, "/postbacks/tmpl", params) == (403, "invalid signature")
    assert await balance(client, user) is None
    assert (await last_log(pool))["outcome"] == "rejected"
    after = counter("ledger_postback_signature_failures_total", provider="tmpl", reason="signature")
    assert after == before + 1


async def test_boundary_shift_is_refused_as_a_replay(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    signature = md5(f"{user}{tx}{SECRET}")
    genuine = {"u": user, "t": tx, "a": "5", "s": "1", "sig": signature}
    shifted = {**genuine, "u": user + tx[:2], "t": tx[2:]}  # signs alike: same concatenation
    assert await get(client, "/postbacks/partial", genuine) == (200, "OK")
    before = counter(
        "ledger_postback_signature_failures_total", provider="partial", reason="replay"
    )
    status, _ = await get(client, "/postbacks/partial", shifted)
    assert status == 403
    assert (await last_log(pool))["outcome"] == "rejected"
    assert await balance(client, user + tx[:2]) is None
    after = counter("ledger_postback_signature_failures_total", provider="partial", reason="replay")
    assert after == before + 1


async def test_reversal_by_status(client: Client) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, "/postbacks/tmpl", tmpl(user, tx, "8")) == (200, "OK")
    assert await get(client, "/postbacks/tmpl", tmpl(user, tx, "8", state="back")) == (200, "OK")
    assert await get(client, "/postbacks/tmpl", tmpl(user, tx, "8", state="back")) == (
        200,
        f"DUP {tx}",
    )
    assert await balance(client, user) == "0"


async def test_unsigned_amount_reversal_takes_the_whole_credit(client: Client) -> None:
    user, tx = unique(), unique("tx")
    signature = md5(f"{user}{tx}{SECRET}")
    credit = {"u": user, "t": tx, "a": "30", "s": "1", "sig": signature}
    assert await get(client, "/postbacks/partial", credit) == (200, "OK")
    assert await get(client, "/postbacks/partial", {**credit, "a": "0", "s": "2"}) == (200, "OK")
    assert await balance(client, user) == "0"


def sorted_get(params: dict[str, str], encoding: str = "base64") -> tuple[str, dict[str, str]]:
    signed = "&".join(
        f"{k}={v}" for k, v in sorted(params.items())
    )  # plain values in these tests: no escaping needed
    mac = hmac.new(HMAC_SECRET.encode(), signed.encode(), hashlib.sha256).digest()
    signature = base64.b64encode(mac).decode() if encoding == "base64" else mac.hex()
    return signature, params


async def test_negative_amount_reverses_and_prefix_links(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, tx = unique(), unique("tx")
    sig, params = sorted_get({"uid": user, "tx": tx, "points": "12.5"})
    resp = await client.get("/postbacks/sorted", params=params, headers={"X-Signature": sig})
    assert (resp.status, await resp.text()) == (200, "OK")
    sig, params = sorted_get({"uid": user, "tx": f"r-{tx}", "points": "-12.5"})
    resp = await client.get("/postbacks/sorted", params=params, headers={"X-Signature": sig})
    assert (resp.status, await resp.text()) == (200, "OK")
    assert await balance(client, user) == "0.0"
    row = await pool.fetchrow("SELECT * FROM events WHERE key = $1", f"reversal:{tx}")
    assert (row["type"], row["provider_ref"], row["amount"]) == ("reversed", tx, Decimal("12.5"))


async def test_post_form_with_header_signature(client: Client) -> None:
    user, tx = unique(), unique("tx")
    sig, params = sorted_get({"uid": user, "tx": tx, "points": "3"})
    resp = await client.post("/postbacks/sorted", data=params, headers={"X-Signature": sig})
    assert (resp.status, await resp.text()) == (200, "OK")
    assert await balance(client, user) == "3"


async def test_wrong_encoding_is_403(client: Client) -> None:
    user, tx = unique(), unique("tx")
    sig, params = sorted_get({"uid": user, "tx": tx, "points": "3"}, encoding="hex")
    resp = await client.get("/postbacks/sorted", params=params, headers={"X-Signature": sig})
    assert resp.status == 403
    assert await balance(client, user) is None


async def test_bad_amount_and_missing_field_are_400(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, "/postbacks/tmpl", tmpl(user, tx, "1e3")) == (
        400,
        "currency must be a plain decimal number below 10^15 (at most 20 decimals)",
    )
    params = tmpl(user, tx, "5")
    del params["snuid"]
    assert await get(client, "/postbacks/tmpl", params) == (400, "missing parameter: snuid")
    assert (await last_log(pool))["outcome"] == "invalid"
    assert await balance(client, user) is None


def url_signed(path: str, query: str) -> str:
    signature = hashlib.sha1(f"{PUBLIC_URL}{path}?{query}{SECRET}".encode()).hexdigest()
    return f"{path}?{query}&hash={signature}"


async def test_reversal_endpoint_and_url_signature(client: Client) -> None:
    user, tx = unique(), unique("tx")
    base = f"/postbacks/urlw/{TOKEN}"
    query = f"user={user}&tx={tx}&reward=7.25"
    resp = await client.get(URL(url_signed(base, query), encoded=True))
    assert (resp.status, await resp.text()) == (200, "OK")
    resp = await client.get(URL(url_signed(f"{base}/reversal", query), encoded=True))
    assert (resp.status, await resp.text()) == (200, "OK")
    assert await balance(client, user) == "0.00"
    # The credit's URL signature does not authenticate it at the reversal endpoint.
    other = unique("tx")
    credit_url = url_signed(base, f"user={user}&tx={other}&reward=1")
    resp = await client.get(URL(credit_url.replace(base, f"{base}/reversal"), encoded=True))
    assert resp.status == 403
    # No reversal endpoint on other walls, nor without the token.
    assert (await client.get("/postbacks/tmpl/reversal")).status == 404
    assert (await client.get("/postbacks/urlw/reversal")).status == 404


async def test_rotation_accepts_both_secrets_and_counts_which(client: Client) -> None:
    def used(provider: str, position: str) -> float:
        return counter("ledger_postback_secret_used_total", provider=provider, secret=position)

    before = {(p, n): used(p, n) for p in ("tmpl", "medioot", "inbrain") for n in "12"}
    user = unique()
    assert await get(client, "/postbacks/tmpl", tmpl(user, unique("tx"), "1")) == (200, "OK")
    old = tmpl(user, unique("tx"), "2", secret=OLD_SECRET)
    assert await get(client, "/postbacks/tmpl", old) == (200, "OK")
    assert await get(client, "/postbacks/tmpl", tmpl(user, unique("tx"), "4", secret="x")) == (
        403,
        "invalid signature",
    )
    assert await balance(client, user) == "3"
    tx = unique("tx")
    mparams = helpers.medioot(user, tx, "1", secret=OLD_SECRET)
    assert await get(client, "/postbacks/medioot", mparams) == (200, "OK")
    rid = unique("r")
    body = {
        "Sig": md5(f"{user}{rid}{OLD_SECRET}"),
        "PanelistId": user,
        "RewardId": rid,
        "Reward": 1,
    }
    resp = await client.post("/postbacks/inbrain", json=body)
    assert resp.status == 200
    after = {key: used(*key) for key in before}
    assert after[("tmpl", "1")] == before[("tmpl", "1")] + 1
    assert after[("tmpl", "2")] == before[("tmpl", "2")] + 1
    assert after[("medioot", "2")] == before[("medioot", "2")] + 1
    assert after[("medioot", "1")] == before[("medioot", "1")]
    assert after[("inbrain", "2")] == before[("inbrain", "2")] + 1


async def test_url_token_rotation_for_profiles_and_adgate(client: Client) -> None:
    def used(provider: str, position: str) -> float:
        return counter("ledger_postback_secret_used_total", provider=provider, secret=position)

    before = used("tokw", "2"), used("adgate", "1"), used("adgate", "2")
    user = unique()
    for token in (TOKEN, OLD_TOKEN):
        params = {"user": user, "tx": unique("tx"), "amount": "1", "state": "approved"}
        assert await get(client, f"/postbacks/tokw/{token}", params) == (200, "OK")
    wrong = {"user": user, "tx": unique("tx"), "amount": "1", "state": "approved"}
    assert (await get(client, f"/postbacks/tokw/{TOKEN}x", wrong))[0] == 403
    assert (await get(client, "/postbacks/tokw", wrong))[0] == 404
    assert await balance(client, user) == "2"
    for token in (TOKEN, OLD_TOKEN):
        event = unique("e")
        query = {
            "s1": user,
            "shm_event_id": event,
            "shm_upload_offer_id": event,
            "shm_status": "APPROVED",
            "points": "1",
        }
        resp = await client.post(f"/postbacks/adgate/{token}", params=query)
        assert resp.status == 200
    assert used("tokw", "2") == before[0] + 1
    assert (used("adgate", "1"), used("adgate", "2")) == (before[1] + 1, before[2] + 1)


async def test_every_secret_position_starts_at_zero(client: Client) -> None:
    resp = await client.get("/metrics")
    text = await resp.text()
    assert 'ledger_postback_secret_used_total{provider="kiwi-default",secret="1"}' in text
    assert 'ledger_postback_secret_used_total{provider="medioot",secret="2"}' in text
    assert SECRET not in text and OLD_SECRET not in text


async def test_pending_is_acknowledged_then_credited(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    params = {"user": user, "tx": tx, "amount": "6", "state": "pending"}
    assert await get(client, f"/postbacks/tokw/{TOKEN}", params) == (200, "OK")
    log = await last_log(pool)
    assert (log["outcome"], log["detail"]) == ("ignored", "pending: nothing credited yet")
    assert await balance(client, user) is None
    params["state"] = "approved"
    assert await get(client, f"/postbacks/tokw/{TOKEN}", params) == (200, "OK")
    assert await balance(client, user) == "6"


async def test_max_amount_applies_to_profiles(client: Client) -> None:
    user = unique()
    params = {"user": user, "tx": unique("tx"), "amount": "100.01", "state": "approved"}
    status, body = await get(client, f"/postbacks/tokw/{TOKEN}", params)
    assert (status, body) == (400, "amount 100.01 is above this wall's max_amount 100")


async def test_test_status_records_without_moving(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, "/postbacks/tmpl", tmpl(user, tx, "9", state="test")) == (200, "OK")
    row = await pool.fetchrow("SELECT * FROM events WHERE provider_ref = $1", tx)
    assert (row["key"], row["test"]) == (f"test-credit:{tx}", True)
    assert await balance(client, user) in (None, "0")
    # The genuine credit still has its own key.
    assert await get(client, "/postbacks/tmpl", tmpl(user, tx, "9")) == (200, "OK")
    assert await balance(client, user) == "9"


# --- kiwiwall -------------------------------------------------------------------------------------


def kiwi(user: str, tx: str, amount: str, status: str = "1") -> dict[str, str]:
    return {
        "status": status,
        "trans_id": tx,
        "sub_id": user,
        "amount": amount,
        "offer_id": "42",
        "offer_name": "An offer",
        "signature": md5(f"{user}:{amount}:{KIWI_SECRET}"),
    }


async def test_kiwiwall_credit_chargeback_and_answers(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, "/postbacks/kiwi", kiwi(user, tx, "100")) == (200, "1")
    assert await get(client, "/postbacks/kiwi", kiwi(user, tx, "100")) == (200, "1")
    assert await balance(client, user) == "100"
    assert await get(client, "/postbacks/kiwi", kiwi(user, tx, "-100", status="2")) == (200, "1")
    assert await balance(client, user) == "0"
    row = await pool.fetchrow("SELECT * FROM events WHERE key = $1", f"reversal:{tx}")
    assert row["data"] == {"offer_id": "42", "offer_name": "An offer"}
    forged = {**kiwi(user, unique("tx"), "100"), "amount": "1000"}
    assert await get(client, "/postbacks/kiwi", forged) == (403, "0")
    assert await get(client, "/postbacks/kiwi", {"status": "1"}) == (400, "0")


async def test_kiwiwall_allows_only_its_published_address_by_default(client: Client) -> None:
    user = unique()
    assert await get(client, "/postbacks/kiwi-default", kiwi(user, unique("tx"), "1")) == (403, "0")
    reason = "source_ip"
    assert (
        counter("ledger_postback_signature_failures_total", provider="kiwi-default", reason=reason)
        >= 1
    )
