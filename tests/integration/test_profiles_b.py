"""Built-in wall profiles, set B, through HTTP against real PostgreSQL: cpx, offertoro,
theoremreach, adgem, monlix, adgate, notik, adscend.

Every postback is built and signed here the way the wall's documentation (or, where the wall
publishes none, the publisher code the profile cites) says, with hashlib/hmac and never with
service code. The research's computed test vectors are asserted against these signers, and
sent through HTTP where the profile's URL allows it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

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
Pairs = list[tuple[str, str]]

SECRET = "testsecret"
PUBLIC_URL = "https://ledger.example.com"
ADGATE_TOKEN = "adgate-offers-token_0123456789"
LOCAL = ["127.0.0.1", "::1"]  # the test client's address, where a profile lists the wall's


def provider(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "protocol": name, "secret": SECRET, **extra}


def profiles_settings(database_url: str) -> Settings:
    return helpers.settings(
        database_url,
        server={"public_url": PUBLIC_URL},
        providers=[
            provider("cpx", allowed_ips=LOCAL),
            provider("offertoro", allowed_ips=LOCAL),
            provider("theoremreach"),
            provider("adgem"),
            provider("monlix"),
            {
                "name": "adgate",
                "protocol": "adgate",
                "url_token": ADGATE_TOKEN,
                "allowed_ips": LOCAL,
            },
            # the profile's own address (AdGate's 52.42.57.125), not the test client's
            {"name": "adgate-strict", "protocol": "adgate", "url_token": ADGATE_TOKEN},
            provider("notik"),
            provider("adscend", allowed_ips=LOCAL),
        ],
    )


@pytest.fixture
def settings(database_url: str) -> Settings:
    return profiles_settings(database_url)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Client:
    app_client: Client = await aiohttp_client(create_app(settings))
    return app_client


# --- signing, as each wall does it ----------------------------------------------------------------


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def hmac_hex(algorithm: str, key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), algorithm).hexdigest()


def hmac_sha1_base64url(key: str, message: str) -> str:
    """TheoremReach: base64 of the HMAC-SHA1, then + to -, / to _, and no = padding."""
    digest = hmac.new(key.encode(), message.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode().replace("+", "-").replace("/", "_").rstrip("=")


def query(pairs: Pairs) -> str:
    """The query as the walls write it: every value percent-encoded as PHP rawurlencode does."""
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in pairs)


def url_signed(path: str, pairs: Pairs, param: str, sign: Callable[[str], str]) -> str:
    """`path?query&param=sign(url without the signature)`, the URL being what the wall called."""
    target = f"{path}?{query(pairs)}"
    return f"{target}&{param}={sign(PUBLIC_URL + target)}"


def cpx_hash(trans_id: str, secret: str = SECRET) -> str:
    return md5_hex(f"{trans_id}-{secret}")


def offertoro_sig(oid: str, user_id: str, secret: str = SECRET) -> str:
    return md5_hex(f"{oid}-{user_id}-{secret}")


def adscend_hash(rate: str, sub1: str, tid: str, status: str, ip: str, key: str = SECRET) -> str:
    return hmac_hex(
        "md5", key, f"rate={rate}&sub1={sub1}&transaction_id={tid}&status={status}&ip={ip}"
    )


def test_the_signers_reproduce_the_research_vectors() -> None:
    assert cpx_hash("abc123") == "55cadc840dd9d3c1a2380a16052f2ded"
    assert offertoro_sig("555", "user42") == "144aa4b5edd2a2056bd6e0822d00ccde"
    assert (
        hmac_sha1_base64url(
            SECRET, "https://example.com/cb?user_id=user42&reward=100&currency=0.50&tx_id=tx1"
        )
        == "jVjn_jz0K9wthJPvsNWwEfty-7E"
    )
    assert (
        hmac_hex(
            "sha256", SECRET, "https://example.com/pb?amount=100&player_id=user42&transaction_id=t1"
        )
        == "8c824381bdea99ee786b7f4ca4153bc563854d79fc6a0c125f653c97c950d012"
    )
    # AdGem v3 (a JSON body signed in a Signature header): the profile reads v2, see adgem.toml
    assert (
        hmac_hex(
            "sha256",
            SECRET,
            '{"request_id":"r1","timestamp":1720727170,"data":{"player_id":"user42","amount":150}}',
        )
        == "47f6f090b4d5b71e683c2355a3cc74de761ad8050715643078e990fe80b4905b"
    )
    assert (
        hmac_hex("sha1", SECRET, "https://example.com/notik?user_id=user42&amount=100&txn_id=t1")
        == "390ebc8d3008c311f7d2c1ff6f3e0e47d235c1e2"
    )
    assert adscend_hash("100", "user42", "t1", "1", "1.2.3.4") == "aa065294ecd462fede88adf9c8a3e0c6"


# --- the walls' postbacks ----------------------------------------------------------------------


def neg(amount: str) -> str:
    return amount if amount.startswith("-") else f"-{amount}"


def cpx(user: str, tx: str, amount: str, reverse: bool, forge: bool) -> str:
    pairs = [
        ("status", "2" if reverse else "1"),
        ("trans_id", tx),
        ("user_id", user),
        ("sub_id", ""),
        ("sub_id_2", ""),
        ("amount_local", amount),
        ("amount_usd", "0.10"),
        ("offer_id", "77"),
        ("hash", cpx_hash(tx, "wrong" if forge else SECRET)),
        ("ip_click", "203.0.113.7"),
        ("type", "complete"),
    ]
    return f"/postbacks/cpx?{query(pairs)}"


def offertoro(user: str, tx: str, amount: str, reverse: bool, forge: bool) -> str:
    oid = "555"
    pairs = [
        ("id", tx),
        ("oid", oid),
        ("user_id", user),
        ("amount", neg(amount) if reverse else amount),
        ("currency_name", "coins"),
        ("payout", "0.35"),
        ("sig", offertoro_sig(oid, user, "wrong" if forge else SECRET)),
    ]
    return f"/postbacks/offertoro?{query(pairs)}"


def theoremreach(user: str, tx: str, amount: str, reverse: bool, forge: bool) -> str:
    pairs = [
        ("user_id", user),
        ("reward", amount),
        ("currency", "0.50"),
        ("tx_id", tx),
        ("reversal", "true" if reverse else "false"),
        ("debug", "false"),
    ]
    key = "wrong" if forge else SECRET
    return url_signed(
        "/postbacks/theoremreach", pairs, "hash", lambda u: hmac_sha1_base64url(key, u)
    )


def adgem(user: str, tx: str, amount: str, reverse: bool, forge: bool) -> str:
    assert not reverse, "AdGem sends no reversals"
    pairs = [  # the setup query's alphabetical order, then what AdGem appends
        ("amount", amount),
        ("campaign_id", "1"),
        ("goal_id", "2"),
        ("ip", "24.24.24.25"),
        ("offer_id", "3"),
        ("offer_name", "Coins & More: 100% free"),  # rawurlencoded by AdGem
        ("payout", "1.5"),
        ("player_id", user),
        ("transaction_id", tx),
        ("request_id", "01786456-b959-404a-baa7-05ef8a2e0290"),
    ]
    key = "wrong" if forge else SECRET
    return url_signed("/postbacks/adgem", pairs, "verifier", lambda u: hmac_hex("sha256", key, u))


def monlix(user: str, tx: str, amount: str, reverse: bool, forge: bool) -> str:
    pairs = [
        ("userid", user),
        ("transactionid", tx),
        ("reward", amount),
        ("payout", "0.10"),
        ("status", "2" if reverse else "1"),
        ("userip", "203.0.113.7"),
        ("country", "US"),
        ("secret", "wrong" if forge else SECRET),
    ]
    return f"/postbacks/monlix?{query(pairs)}"


def adgate(user: str, tx: str, amount: str, reverse: bool, forge: bool) -> str:
    pairs = [
        ("conversion_id", tx),
        ("user_id", user),
        ("point_value", amount),
        ("usd_value", "0.50"),
        ("offer_title", "Install & play"),
        ("state", "rejected" if reverse else "approved"),
    ]
    token = "wrong-token-0123456789abc" if forge else ADGATE_TOKEN
    return f"/postbacks/adgate/{token}?{query(pairs)}"


def notik(user: str, tx: str, amount: str, reverse: bool, forge: bool) -> str:
    pairs = [
        ("user_id", user),
        ("txn_id", tx),
        ("amount", neg(amount) if reverse else amount),
        ("payout", "0.10"),
        ("offer_id", "9"),
        ("offer_name", "Spin the wheel"),
    ]
    key = "wrong" if forge else SECRET
    return url_signed("/postbacks/notik", pairs, "hash", lambda u: hmac_hex("sha1", key, u))


def adscend(user: str, tx: str, amount: str, reverse: bool, forge: bool) -> str:
    status, ip = ("2" if reverse else "1"), "203.0.113.7"
    pairs = [
        ("rate", amount),
        ("sub1", user),
        ("transaction_id", tx),
        ("status", status),
        ("ip", ip),
        ("hash", adscend_hash(amount, user, tx, status, ip, "wrong" if forge else SECRET)),
    ]
    return f"/postbacks/adscend?{query(pairs)}"


Answer = tuple[int, str]


@dataclass(frozen=True)
class Wall:
    name: str
    build: Callable[[str, str, str, bool, bool], str]
    ok: Answer
    duplicate: Answer
    refused: Answer
    invalid: Answer
    reverses: bool  # the wall sends reversals
    whole: bool  # the signature leaves the amount out: a reversal takes back the whole credit
    negative: bool  # a reversal is a negative amount

    def url(
        self, user: str, tx: str, amount: str, *, reverse: bool = False, forge: bool = False
    ) -> str:
        return self.build(user, tx, amount, reverse, forge)


OK = (200, "OK")
WALLS = [
    Wall("cpx", cpx, OK, OK, (403, "invalid hash"), (400, "bad request"), True, True, False),
    Wall("offertoro", offertoro, (200, "1"), (200, "1"), (403, "0"), (400, "0"), True, True, True),
    Wall(
        "theoremreach",
        theoremreach,
        OK,
        OK,
        (403, "invalid hash"),
        (400, "bad request"),
        True,
        False,
        False,
    ),
    Wall(
        "adgem",
        adgem,
        OK,
        OK,
        (403, "Error: invalid verifier"),
        (400, "Error: bad request"),
        False,
        False,
        False,
    ),
    Wall(
        "monlix", monlix, OK, OK, (403, "invalid secret"), (400, "bad request"), True, True, False
    ),
    Wall("adgate", adgate, OK, OK, (403, "forbidden"), (400, "bad request"), True, True, False),
    Wall("notik", notik, OK, OK, (403, "invalid hash"), (400, "bad request"), True, False, True),
    Wall(
        "adscend", adscend, OK, OK, (403, "invalid hash"), (400, "bad request"), True, False, False
    ),
]
BY_NAME = {wall.name: wall for wall in WALLS}
REVERSING = [wall for wall in WALLS if wall.reverses]


def ids(wall: Wall) -> str:
    return wall.name


async def send(client: Client, url: str) -> Answer:
    """GET `url` byte for byte as written (the test client would otherwise re-encode the
    query, e.g. %3A to ':', and a wall's URL signature is over the URL as the wall sent it)."""
    target = URL(str(client.make_url("/")).rstrip("/") + url, encoded=True)
    async with client.session.get(target) as resp:
        return resp.status, await resp.text()


async def balance(client: Client, user: str) -> Decimal | None:
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    if resp.status == 404:
        return None
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return Decimal(str(body["balance"]))


async def events(pool: asyncpg.Pool, provider: str, tx: str) -> list[tuple[str, str, Decimal]]:
    rows = await pool.fetch(
        "SELECT key, type, amount FROM events WHERE provider = $1 AND provider_ref = $2"
        " ORDER BY position",
        provider,
        tx,
    )
    return [(r["key"], r["type"], r["amount"]) for r in rows]


async def log_row(pool: asyncpg.Pool, provider: str, **where: str) -> asyncpg.Record | None:
    """The latest postback-log row of `provider` (refusals are logged a moment later)."""
    clauses = "".join(f" AND {name} = ${i}" for i, name in enumerate(where, 2))
    sql = f"SELECT * FROM postback_log WHERE provider = $1{clauses} ORDER BY id DESC LIMIT 1"
    for _ in range(50):
        row: asyncpg.Record | None = await pool.fetchrow(sql, provider, *where.values())
        if row is not None:
            return row
        await asyncio.sleep(0.05)
    return None


# --- every wall ---------------------------------------------------------------------------------


@pytest.mark.parametrize("wall", WALLS, ids=ids)
async def test_credit_moves_the_balance_exactly(
    client: Client, pool: asyncpg.Pool, wall: Wall
) -> None:
    user, tx = unique(wall.name), unique("tx")
    assert await send(client, wall.url(user, tx, "10.50")) == wall.ok
    assert await balance(client, user) == Decimal("10.50")
    assert await events(pool, wall.name, tx) == [(f"credit:{tx}", "credited", Decimal("10.50"))]


@pytest.mark.parametrize("wall", WALLS, ids=ids)
async def test_duplicate_answers_the_same_and_credits_once(
    client: Client, pool: asyncpg.Pool, wall: Wall
) -> None:
    user, tx = unique(wall.name), unique("tx")
    url = wall.url(user, tx, "7")
    assert await send(client, url) == wall.ok
    assert await send(client, url) == wall.duplicate
    assert await send(client, url) == wall.duplicate
    assert await balance(client, user) == Decimal("7")
    assert len(await events(pool, wall.name, tx)) == 1


@pytest.mark.parametrize("wall", WALLS, ids=ids)
async def test_forged_signature_is_refused_and_credits_nothing(
    client: Client, pool: asyncpg.Pool, wall: Wall
) -> None:
    user, tx = unique(wall.name), unique("tx")
    assert await send(client, wall.url(user, tx, "5", forge=True)) == wall.refused
    assert await balance(client, user) is None
    assert await events(pool, wall.name, tx) == []
    row = await log_row(pool, wall.name, outcome="rejected")
    assert row is not None and row["http_status"] == wall.refused[0]
    # the genuine postback is unaffected by the forgery
    assert await send(client, wall.url(user, tx, "5")) == wall.ok
    assert await balance(client, user) == Decimal("5")


@pytest.mark.parametrize("wall", REVERSING, ids=ids)
async def test_reversal_takes_the_credit_back(
    client: Client, pool: asyncpg.Pool, wall: Wall
) -> None:
    user, tx = unique(wall.name), unique("tx")
    assert await send(client, wall.url(user, tx, "12.25")) == wall.ok
    assert await send(client, wall.url(user, tx, "12.25", reverse=True)) == wall.ok
    assert await balance(client, user) == 0
    kinds = [(key, kind) for key, kind, _ in await events(pool, wall.name, tx)]
    assert kinds == [(f"credit:{tx}", "credited"), (f"reversal:{tx}", "reversed")]
    # the reversal resent is a duplicate
    assert await send(client, wall.url(user, tx, "12.25", reverse=True)) == wall.duplicate
    assert await balance(client, user) == 0


@pytest.mark.parametrize("wall", REVERSING, ids=ids)
async def test_reversal_before_its_credit_nets_to_zero(client: Client, wall: Wall) -> None:
    user, tx = unique(wall.name), unique("tx")
    assert await send(client, wall.url(user, tx, "3", reverse=True)) == wall.ok
    assert await balance(client, user) in (None, 0)
    assert await send(client, wall.url(user, tx, "3")) == wall.ok
    assert await balance(client, user) == 0


@pytest.mark.parametrize("wall", [w for w in REVERSING if w.whole], ids=ids)
async def test_unsigned_amount_reversal_takes_back_the_whole_credit(
    client: Client, wall: Wall
) -> None:
    """The signature does not cover the amount, so a reversal's amount cannot be trusted: it
    takes back exactly what its credit gave, whatever it names."""
    user, tx = unique(wall.name), unique("tx")
    assert await send(client, wall.url(user, tx, "40")) == wall.ok
    assert await send(client, wall.url(user, tx, "0.01", reverse=True)) == wall.ok
    assert await balance(client, user) == 0


@pytest.mark.parametrize("wall", WALLS, ids=ids)
@pytest.mark.parametrize("amount", ["abc", "NaN", "1e3", "", "10,5"])
async def test_bad_amount_is_invalid_and_credits_nothing(
    client: Client, pool: asyncpg.Pool, wall: Wall, amount: str
) -> None:
    user, tx = unique(wall.name), unique("tx")
    assert await send(client, wall.url(user, tx, amount)) == wall.invalid
    assert await balance(client, user) is None
    assert await events(pool, wall.name, tx) == []


@pytest.mark.parametrize("wall", [w for w in WALLS if not w.negative], ids=ids)
async def test_negative_amount_is_invalid_where_it_is_no_reversal(
    client: Client, wall: Wall
) -> None:
    user, tx = unique(wall.name), unique("tx")
    assert await send(client, wall.url(user, tx, "-4")) == wall.invalid
    assert await balance(client, user) is None


@pytest.mark.parametrize("wall", [w for w in WALLS if w.negative], ids=ids)
async def test_negative_amount_is_the_reversal(
    client: Client, pool: asyncpg.Pool, wall: Wall
) -> None:
    user, tx = unique(wall.name), unique("tx")
    assert await send(client, wall.url(user, tx, "8")) == wall.ok
    assert await send(client, wall.url(user, tx, "-8")) == wall.ok
    assert await balance(client, user) == 0
    assert [kind for _, kind, _ in await events(pool, wall.name, tx)] == ["credited", "reversed"]


# --- the research's vectors through HTTP --------------------------------------------------------


async def test_cpx_vector_credits(client: Client, pool: asyncpg.Pool) -> None:
    user = unique("cpx")
    pairs = [
        ("status", "1"),
        ("trans_id", "abc123"),
        ("user_id", user),
        ("amount_local", "100"),
        ("hash", "55cadc840dd9d3c1a2380a16052f2ded"),
    ]
    assert await send(client, f"/postbacks/cpx?{query(pairs)}") == OK
    assert await balance(client, user) == 100
    assert await events(pool, "cpx", "abc123") == [("credit:abc123", "credited", Decimal("100"))]


async def test_offertoro_vector_credits(client: Client, pool: asyncpg.Pool) -> None:
    before = await balance(client, "user42") or 0
    tx = unique("ot")
    url = f"/postbacks/offertoro?id={tx}&oid=555&user_id=user42&amount=35"
    assert await send(client, url + "&sig=144aa4b5edd2a2056bd6e0822d00ccde") == (200, "1")
    assert await balance(client, "user42") == before + 35


async def test_offertoro_minimal_postback_names_match_without_case(client: Client) -> None:
    """The doc's own example writes OID and Amount."""
    user, tx = unique("ot"), unique("tx")
    url = f"/postbacks/offertoro?id={tx}&OID=123&user_id={user}&Amount=10"
    assert await send(client, f"{url}&sig={offertoro_sig('123', user)}") == (200, "1")
    assert await balance(client, user) == 10


async def test_adscend_vector_credits(client: Client, pool: asyncpg.Pool) -> None:
    before = await balance(client, "user42") or 0
    url = (
        "/postbacks/adscend?rate=100&sub1=user42&transaction_id=t1&status=1&ip=1.2.3.4"
        "&hash=aa065294ecd462fede88adf9c8a3e0c6"
    )
    assert await send(client, url) == OK
    assert await balance(client, "user42") == before + 100
    assert await events(pool, "adscend", "t1") == [("credit:t1", "credited", Decimal("100"))]


async def test_adscend_signature_covers_the_amount(client: Client) -> None:
    user, tx = unique("as"), unique("tx")
    genuine = adscend(user, tx, "1", False, False)
    assert await send(client, genuine.replace("rate=1&", "rate=1000&")) == (403, "invalid hash")
    assert await balance(client, user) is None


# --- wall by wall -------------------------------------------------------------------------------


async def test_url_signed_walls_refuse_a_changed_amount(client: Client) -> None:
    for wall in (BY_NAME["theoremreach"], BY_NAME["adgem"], BY_NAME["notik"]):
        user, tx = unique(wall.name), unique("tx")
        url = wall.url(user, tx, "2")
        tampered = url.replace("=2&", "=2000&", 1)
        assert tampered != url
        assert await send(client, tampered) == wall.refused, wall.name
        assert await balance(client, user) is None


async def test_theoremreach_credits_without_a_reversal_parameter(client: Client) -> None:
    user, tx = unique("tr"), unique("tx")
    pairs = [("user_id", user), ("reward", "60"), ("currency", "0.30"), ("tx_id", tx)]
    url = url_signed(
        "/postbacks/theoremreach", pairs, "hash", lambda u: hmac_sha1_base64url(SECRET, u)
    )
    assert await send(client, url) == OK
    assert await balance(client, user) == 60


async def test_adgem_install_postback_appended_after_the_verifier(client: Client) -> None:
    """AdGem appends &nonpayable_install_goal=true to the end of the URL it signed."""
    user, tx = unique("ag"), unique("tx")
    url = adgem(user, tx, "0", False, False)
    assert await send(client, url) == OK
    pairs = [("amount", "5"), ("player_id", user), ("transaction_id", unique("tx"))]
    signed = url_signed(
        "/postbacks/adgem", pairs, "verifier", lambda u: hmac_hex("sha256", SECRET, u)
    )
    assert await send(client, signed) == OK
    assert await balance(client, user) == 5


async def test_monlix_secret_is_never_logged(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique("mx"), unique("tx")
    assert await send(client, monlix(user, tx, "1", False, False)) == OK
    assert await send(client, monlix(user, unique("tx"), "1", False, True)) == (
        403,
        "invalid secret",
    )
    assert await log_row(pool, "monlix", outcome="rejected") is not None
    leaked = await pool.fetchval(
        "SELECT count(*) FROM postback_log WHERE provider = 'monlix' AND params::text LIKE $1",
        f"%{SECRET}%",
    )
    assert leaked == 0


async def test_monlix_two_credits_share_the_secret(client: Client) -> None:
    """The same secret authenticates every postback: two transactions are not a replay."""
    user = unique("mx")
    assert await send(client, monlix(user, unique("tx"), "1", False, False)) == OK
    assert await send(client, monlix(user, unique("tx"), "2", False, False)) == OK
    assert await balance(client, user) == 3


async def test_adgate_pending_acknowledges_then_approved_credits(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, tx = unique("ag"), unique("conv")
    pending = adgate(user, tx, "30", False, False).replace("state=approved", "state=pending")
    assert await send(client, pending) == OK
    assert await balance(client, user) is None
    assert await events(pool, "adgate", tx) == []
    row = await log_row(pool, "adgate", outcome="ignored")
    assert row is not None and row["detail"] == "pending: nothing credited yet"
    assert await send(client, adgate(user, tx, "30", False, False)) == OK
    assert await balance(client, user) == 30


async def test_adgate_without_state_credits(client: Client) -> None:
    user, tx = unique("ag"), unique("conv")
    url = f"/postbacks/adgate/{ADGATE_TOKEN}?conversion_id={tx}&user_id={user}&point_value=4"
    assert await send(client, url) == OK
    assert await balance(client, user) == 4


async def test_adgate_unknown_state_is_invalid(client: Client) -> None:
    user, tx = unique("ag"), unique("conv")
    url = adgate(user, tx, "4", False, False).replace("state=approved", "state=maybe")
    assert await send(client, url) == (400, "bad request")
    assert await balance(client, user) is None


async def test_adgate_documented_example_conversion_id(client: Client, pool: asyncpg.Pool) -> None:
    user, tx = unique("ag"), "4d63afe33875ceeec17dd7eab41b8590a"
    assert await send(client, adgate(user, tx, "15", False, False)) == OK
    assert await events(pool, "adgate", tx) == [(f"credit:{tx}", "credited", Decimal("15"))]


async def test_adgate_profile_address_applies_without_the_providers_own(client: Client) -> None:
    """Without allowed_ips of its own, the provider takes AdGate's published address from the
    profile: the test client is not 52.42.57.125."""
    user, tx = unique("ag"), unique("conv")
    url = adgate(user, tx, "9", False, False).replace(
        "/postbacks/adgate/", "/postbacks/adgate-strict/"
    )
    assert await send(client, url) == (403, "forbidden")
    assert await balance(client, user) is None


@pytest.mark.parametrize("wall", WALLS, ids=ids)
async def test_simulate_builds_what_the_profile_accepts(
    client: Client, settings: Settings, wall: Wall
) -> None:
    """`postback-ledger simulate` for these profiles: its credit (and reversal) are accepted."""
    from service.providers.setup import simulated

    config = next(p for p in settings.providers if p.name == wall.name)
    user, tx = unique(wall.name), unique("sim")
    built = simulated(config, settings.server, user=user, amount="6", transaction=tx)
    assert (built.method, built.body) == ("GET", b"")
    assert await send(client, built.path) == wall.ok
    assert await balance(client, user) == 6
    if wall.reverses:
        built = simulated(
            config, settings.server, user=user, amount="6", transaction=tx, reverse=True
        )
        assert await send(client, built.path) == wall.ok
        assert await balance(client, user) == 0
