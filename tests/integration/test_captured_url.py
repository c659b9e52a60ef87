"""What someone holding one genuine postback URL (or body) can do with it, through HTTP against
real PostgreSQL: reshape it across field boundaries, flip it into a reversal of any size, point it
at another user, inflate its amount, flood the service with forgeries. Each must move no money
beyond what the genuine postback moved, and never delay a genuine postback."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from service.app import create_app
from service.settings import Settings
from tests import helpers
from tests.helpers import AUTH, MEDIOOT_SECRET, md5, medioot, unique

Client = TestClient[web.Request, web.Application]

INBRAIN_SECRET = "test-inbrain-secret"
ADGATE_TOKEN = "adgate-url-token_0123456789"
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return helpers.settings(
        database_url,
        server={"max_body_bytes": 1 << 20},
        providers=[
            {"name": "medioot", "protocol": "medioot", "secret": MEDIOOT_SECRET},
            {"name": "inbrain", "protocol": "inbrain", "secret": INBRAIN_SECRET},
            {
                "name": "capped",
                "protocol": "medioot",
                "secret": MEDIOOT_SECRET,
                "max_amount": "100",
            },
            {"name": "adgate", "protocol": "adgate_receipts", "url_token": ADGATE_TOKEN},
        ],
    )


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Client:
    result: Client = await aiohttp_client(create_app(settings))
    return result


async def get(client: Client, params: dict[str, str], provider: str = "medioot") -> tuple[int, str]:
    resp = await client.get(f"/postbacks/{provider}", params=params)
    return resp.status, await resp.text()


async def inbrain(client: Client, body: dict[str, Any] | bytes) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post("/postbacks/inbrain", data=data, headers=JSON_HEADERS)
    return resp.status, await resp.text()


def inbrain_callback(
    panelist: str, reward_id: str, reward: str, reward_type: str
) -> dict[str, Any]:
    sig = hashlib.md5((panelist + reward_id + INBRAIN_SECRET).encode()).hexdigest()
    return {
        "Sig": sig,
        "PanelistId": panelist,
        "RewardId": reward_id,
        "Reward": json.loads(reward),
        "RewardType": reward_type,
    }


async def wallet(client: Client, user: str) -> dict[str, Any] | None:
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    if resp.status == 404:
        return None
    body: dict[str, Any] = await resp.json()
    return body


async def balance(client: Client, user: str) -> str | None:
    body = await wallet(client, user)
    return None if body is None else str(body["balance"])


def replays(provider: str) -> float:
    value = REGISTRY.get_sample_value(
        "ledger_postback_signature_failures_total", {"provider": provider, "reason": "replay"}
    )
    return value or 0.0


async def last_log(pool: asyncpg.Pool) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow("SELECT * FROM postback_log ORDER BY id DESC LIMIT 1")
    return row


async def assert_verified(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        report = await helpers.verify_log(conn)
    assert report.ok, report.differences


# --- a signature authenticates one postback ------------------------------------------------------


async def test_medioot_boundary_shift_is_refused_as_a_replay(
    client: Client, pool: asyncpg.Pool
) -> None:
    subid, other = f"{unique('u')}1001", None
    sig = md5(subid + "58231" + "2.50" + MEDIOOT_SECRET)
    genuine = {"subid": subid, "transid": "58231", "reward": "2.50", "status": "1"}
    assert await get(client, {**genuine, "signature": sig}) == (200, "OK")
    before = replays("medioot")

    more_money = {**genuine, "transid": "5", "reward": "82312.50"}
    status, text = await get(client, {**more_money, "signature": sig})
    assert status == 403
    assert "signature already used" in text
    assert (await last_log(pool))["outcome"] == "rejected"

    other = subid + "5"
    another_user = {**genuine, "subid": other, "transid": "8231"}
    assert (await get(client, {**another_user, "signature": sig}))[0] == 403

    assert await balance(client, subid) == "2.50"
    assert await balance(client, other) is None
    assert replays("medioot") == before + 2
    assert await pool.fetchval("SELECT count(*) FROM events WHERE user_id = $1", other) == 0


async def test_the_signature_itself_is_never_stored(pool: asyncpg.Pool, client: Client) -> None:
    params = medioot(unique(), unique("tx"), "1.00")
    assert await get(client, params) == (200, "OK")
    stored = await pool.fetch("SELECT signature, signed FROM signatures")
    sig = params["signature"].encode()
    assert stored and all(sig not in bytes(r["signature"]) for r in stored)
    assert hashlib.sha256(sig).digest() in {bytes(r["signature"]) for r in stored}


async def test_a_credit_and_its_reversal_may_carry_the_same_signature(client: Client) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "7.25")) == (200, "OK")
    assert await get(client, medioot(user, tx, "7.25", status="2")) == (200, "OK")
    assert await balance(client, user) == "0.00"


async def test_a_retried_genuine_postback_is_still_a_duplicate(client: Client) -> None:
    params = medioot(unique(), unique("tx"), "3")
    assert await get(client, params) == (200, "OK")
    assert await get(client, params) == (200, "DUP")
    upper = {**params, "signature": params["signature"].upper()}
    assert await get(client, upper) == (200, "DUP")


async def test_replays_in_one_batch_are_refused_too(client: Client) -> None:
    # Sent together, the genuine postback and its shifted copies share one group commit.
    subid = unique("u")
    sig = md5(subid + "777" + "1.5" + MEDIOOT_SECRET)
    shapes = [("777", "1.5"), ("77", "71.5"), ("7", "771.5"), ("7771", ".5")]
    answers = await asyncio.gather(
        *(
            get(
                client, {"subid": subid, "transid": t, "reward": r, "status": "1", "signature": sig}
            )
            for t, r in shapes
        )
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses.count(200) == 1, answers  # whichever came first; never more than one
    body = await wallet(client, subid)
    assert body is not None and body["event_count"] == 1


async def test_inbrain_shifted_panelist_and_reward_id_is_refused(
    client: Client, pool: asyncpg.Pool
) -> None:
    panelist, reward_id = unique("p"), unique("r")
    genuine = inbrain_callback(panelist, reward_id, "5", "offer_completed")
    assert await inbrain(client, genuine) == (200, "OK")
    shifted = {
        **genuine,
        "PanelistId": panelist + reward_id[:3],
        "RewardId": reward_id[3:],
        "Reward": 999999999999.99,
    }
    assert (await inbrain(client, shifted))[0] == 403
    assert await balance(client, panelist + reward_id[:3]) is None
    await assert_verified(pool)


# --- a reversal takes back at most what its credit gave ------------------------------------------


async def test_inbrain_captured_credit_turned_into_a_huge_reversal_takes_back_only_the_credit(
    client: Client, pool: asyncpg.Pool
) -> None:
    panelist, reward_id = unique("p"), unique("r")
    assert await inbrain(client, inbrain_callback(panelist, reward_id, "5", "offer_completed")) == (
        200,
        "OK",
    )
    forged = inbrain_callback(panelist, reward_id, "500000", "offer_completion_reversed")
    assert await inbrain(client, forged) == (200, "OK")
    body = await wallet(client, panelist)
    assert body is not None
    assert (body["balance"], body["total_reversed"]) == ("0", "5")
    await assert_verified(pool)


async def test_a_reversal_larger_than_its_credit_takes_back_the_credit(client: Client) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "5")) == (200, "OK")
    assert await get(client, medioot(user, tx, "8", status="2")) == (200, "OK")
    body = await wallet(client, user)
    assert body is not None
    assert (body["balance"], body["total_credited"], body["total_reversed"]) == ("0", "5", "5")


async def test_a_reversal_without_a_credit_moves_nothing_until_the_credit_arrives(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "4", status="2")) == (200, "OK")
    assert await balance(client, user) == "0"
    assert await get(client, medioot(user, tx, "10")) == (200, "OK")
    assert await balance(client, user) == "6"
    await assert_verified(pool)


async def test_a_reversal_naming_another_user_is_a_conflict(
    client: Client, pool: asyncpg.Pool
) -> None:
    owner, other, tx = unique(), unique(), unique("tx")
    assert await get(client, medioot(owner, tx, "10")) == (200, "OK")
    assert await get(client, medioot(other, tx, "10", status="2")) == (200, "DUP")
    log = await last_log(pool)
    assert (log["outcome"], log["detail"]) == (
        "conflict",
        "the reversal names another user than the credit it reverses",
    )
    assert await balance(client, owner) == "10"
    assert await balance(client, other) is None


async def test_two_reversals_of_one_click_under_new_transids_apply_once(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, click = unique(), unique("click")
    assert await get(client, medioot(user, unique("tx"), "6", uuid=click)) == (200, "OK")
    assert await get(client, medioot(user, unique("tx"), "6", status="2", uuid=click)) == (
        200,
        "OK",
    )
    assert await get(client, medioot(user, unique("tx"), "6", status="2", uuid=click)) == (
        200,
        "DUP",
    )
    assert (await last_log(pool))["outcome"] == "conflict"
    assert await balance(client, user) == "0"
    await assert_verified(pool)


async def test_concurrent_reversals_of_one_credit_apply_once(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, click = unique(), unique("click")
    assert await get(client, medioot(user, unique("tx"), "9", uuid=click)) == (200, "OK")
    answers = await asyncio.gather(
        *(get(client, medioot(user, unique("tx"), "9", status="2", uuid=click)) for _ in range(20))
    )
    assert sorted(answers).count((200, "OK")) == 1
    assert await balance(client, user) == "0"
    await assert_verified(pool)


# --- max_amount ----------------------------------------------------------------------------------


async def test_max_amount_refuses_a_larger_postback(client: Client, pool: asyncpg.Pool) -> None:
    user = unique()
    assert await get(client, medioot(user, unique("tx"), "100.00"), "capped") == (200, "OK")
    status, text = await get(client, medioot(user, unique("tx"), "100.01"), "capped")
    assert status == 400
    assert text == "amount 100.01 is above this wall's max_amount 100"
    assert (await last_log(pool))["outcome"] == "invalid"
    assert await balance(client, user) == "100.00"


# --- no 500 for any input ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 1000, 100_000])
async def test_deeply_nested_json_is_refused_cleanly(
    client: Client, pool: asyncpg.Pool, depth: int
) -> None:
    body = b'{"Sig": "x", "PanelistId": "p", "RewardId": "r", "Reward": ' + (
        b"[" * depth + b"]" * depth + b"}"
    )
    resp = await client.post("/postbacks/inbrain", data=body, headers=JSON_HEADERS)
    # Refused as malformed, or (where the decoder copes with the depth) for its signature.
    assert resp.status in (400, 403), await resp.text()
    assert (await last_log(pool))["outcome"] in ("invalid", "rejected")


# --- refusals are compact and kept off the path of genuine postbacks -----------------------------


async def test_a_refusal_is_logged_in_at_most_4_kib(client: Client, pool: asyncpg.Pool) -> None:
    params = {f"p{i}": "x" * 2000 for i in range(60)}
    resp = await client.post(
        "/postbacks/medioot",
        params={"subid": "u", "transid": "t", "reward": "1", "status": "1", "signature": "bad"},
        data=params,
    )
    assert resp.status == 403
    row = await pool.fetchrow(
        "SELECT octet_length(params::text) + octet_length(detail) AS size, params"
        " FROM postback_log ORDER BY id DESC LIMIT 1"
    )
    assert row["size"] <= 4096
    assert "subid" in row["params"]


async def test_a_flood_of_forgeries_does_not_crowd_out_genuine_postbacks(
    aiohttp_client: Any, database_url: str
) -> None:
    # A small queue makes the point quickly: forgeries used to share it with genuine postbacks.
    settings = helpers.settings(
        database_url, writer={"max_queue": 10, "refusal_queue": 10, "batch_max": 5}
    )
    client: Client = await aiohttp_client(create_app(settings))
    forged = {"subid": "x", "transid": "y", "reward": "1", "status": "1", "signature": "0" * 32}
    users = [unique() for _ in range(10)]
    answers = await asyncio.gather(
        *(get(client, {**forged, "transid": str(i)}) for i in range(400)),
        *(get(client, medioot(u, unique("tx"), "1")) for u in users),
    )
    genuine = answers[400:]
    assert genuine == [(200, "OK")] * len(users)
    assert {status for status, _ in answers[:400]} == {403}
    unlogged = REGISTRY.get_sample_value(
        "ledger_postback_refusals_unlogged_total", {"provider": "medioot"}
    )
    assert unlogged is not None and unlogged > 0  # the refusals' queue was full, and said so


# --- AdGate: a receipt offer belongs to one user -------------------------------------------------


async def test_an_adgate_approval_naming_another_user_is_a_conflict(
    client: Client, pool: asyncpg.Pool
) -> None:
    owner, other, offer = unique(), unique(), unique("offer")

    async def send(user: str, status: str, points: str | None = None) -> tuple[int, str]:
        query = {
            "s1": user,
            "shm_upload_offer_id": offer,
            "shm_status": status,
            "shm_event_id": unique("ev"),
        }
        if points is not None:
            query["points"] = points
        resp = await client.post(f"/postbacks/adgate/{ADGATE_TOKEN}", params=query)
        return resp.status, await resp.text()

    assert (await send(owner, "MANUAL_REVIEW"))[0] == 200
    assert (await send(other, "APPROVED", "50"))[0] == 200
    log = await last_log(pool)
    assert (log["outcome"], log["detail"]) == (
        "conflict",
        "the receipt offer belongs to another user",
    )
    assert await balance(client, other) is None
    resp = await client.get(f"/v1/receipt-offers/adgate/{offer}", headers=AUTH)
    body = await resp.json()
    assert (body["user_id"], body["status"], body["points_credited"]) == (
        owner,
        "MANUAL_REVIEW",
        "0",
    )
    await assert_verified(pool)


# --- a captured URL can neither pre-empt nor undo a chargeback -----------------------------------


async def test_a_credit_url_flipped_with_another_click_takes_back_only_its_own_credit(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, tx, click = unique(), unique("tx"), unique("click")
    credit = medioot(user, tx, "10", uuid=click)
    assert await get(client, credit) == (200, "OK")
    forged = {**credit, "status": "2", "uuid": unique("click")}
    assert await get(client, forged) == (200, "OK")  # what the real chargeback would have done
    assert await balance(client, user) == "0"
    assert await get(client, medioot(user, tx, "10", status="2", uuid=click)) == (200, "DUP")
    assert await balance(client, user) == "0"
    await assert_verified(pool)


async def test_a_chargeback_url_flipped_into_a_credit_credits_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, click = unique(), unique("click")
    assert await get(client, medioot(user, unique("tx"), "10", uuid=click)) == (200, "OK")
    chargeback = medioot(user, unique("tx"), "10", status="2", uuid=click)
    assert await get(client, chargeback) == (200, "OK")
    assert await balance(client, user) == "0"
    for other_click in (click, unique("click")):
        flipped = {**chargeback, "status": "1", "uuid": other_click}
        assert await get(client, flipped) == (200, "DUP")
    log = await last_log(pool)
    assert (log["outcome"], log["detail"]) == (
        "conflict",
        "a reversal already used this signature: the credit and its reversal cancel out",
    )
    assert await balance(client, user) == "0"
    await assert_verified(pool)


async def test_a_reversal_without_the_click_pairs_by_its_transaction(client: Client) -> None:
    user, tx = unique(), unique("tx")
    assert await get(client, medioot(user, tx, "10", uuid=unique("click"))) == (200, "OK")
    assert await get(client, medioot(user, tx, "10", status="2")) == (200, "OK")
    assert await balance(client, user) == "0"


async def test_a_chargeback_under_its_own_transaction_before_its_credit_still_pairs(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, click = unique(), unique("click")
    assert await get(client, medioot(user, unique("tx"), "4", status="2", uuid=click)) == (
        200,
        "OK",
    )
    assert await get(client, medioot(user, unique("tx"), "10", uuid=click)) == (200, "OK")
    assert await balance(client, user) == "6"
    await assert_verified(pool)


@pytest.mark.parametrize(
    "forgery", [{"Reward": 0}, {"Reward": 0.01}, {"IsTest": True}], ids=["zero", "cent", "test"]
)
async def test_a_forged_inbrain_reversal_cannot_pre_empt_the_real_one(
    client: Client, pool: asyncpg.Pool, forgery: dict[str, Any]
) -> None:
    panelist, reward_id = unique("p"), unique("r")
    credit = inbrain_callback(panelist, reward_id, "10", "offer_completed")
    assert await inbrain(client, credit) == (200, "OK")
    forged = {**credit, "RewardType": "offer_completion_reversed", **forgery}
    assert await inbrain(client, forged) == (200, "OK")
    real = inbrain_callback(panelist, reward_id, "10", "offer_completion_reversed")
    assert await inbrain(client, real) == (200, "OK")
    body = await wallet(client, panelist)
    assert body is not None
    assert (body["balance"], body["total_reversed"]) == ("0", "10")
    await assert_verified(pool)


async def test_a_credit_joins_its_users_lone_chargeback_not_another_users(
    client: Client, pool: asyncpg.Pool
) -> None:
    owner, other, click = unique(), unique(), unique("click")
    first, second, third = (f"{unique('T')}-{n}" for n in (1, 2, 3))
    assert await get(client, medioot(other, first, "4", status="2", uuid=click)) == (200, "OK")
    assert await get(client, medioot(owner, second, "4", status="2", uuid=click)) == (200, "OK")
    assert await get(client, medioot(owner, third, "10", uuid=click)) == (200, "OK")
    assert await balance(client, owner) == "6"
    await assert_verified(pool)


async def test_a_click_named_only_by_a_reversal_does_not_become_its_credits(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, click, tx = unique(), unique("click"), unique("tx")
    assert await get(client, medioot(user, tx, "10")) == (200, "OK")
    assert await get(client, medioot(user, tx, "10", status="2", uuid=click)) == (200, "OK")
    assert await balance(client, user) == "0"
    # No credit named the click: this chargeback waits for its own credit, which then pairs.
    assert await get(client, medioot(user, unique("tx"), "3", status="2", uuid=click)) == (
        200,
        "OK",
    )
    assert await get(client, medioot(user, unique("tx"), "7", uuid=click)) == (200, "OK")
    assert await balance(client, user) == "4"
    await assert_verified(pool)
