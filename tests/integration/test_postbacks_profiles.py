"""Walls described by a profile (protocol custom, and the built-in kiwiwall) through HTTP against
real PostgreSQL."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

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
            {"name": "kiwi", "protocol": "kiwiwall", "secret": KIWI_SECRET, "allowed_ips": []},
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
