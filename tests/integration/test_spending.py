"""Spending through HTTP against real PostgreSQL: debits, internal credits, holds, idempotency
keys, chargebacks after spending, and every kind of bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from service.upkeep import refresh_gauges, sweep
from tests import helpers
from tests.helpers import AUTH, SPEND_AUTH, medioot, unique

Client = TestClient  # type: ignore[type-arg]


def key() -> dict[str, str]:
    return {**SPEND_AUTH, "Idempotency-Key": str(uuid.uuid4())}


async def post(client: Client, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post(path, data=data, headers=headers or key())
    return resp.status, await resp.json(), resp


async def funded(client: Client, amount: str = "100") -> str:
    user = unique("spender")
    resp = await client.get("/postbacks/medioot", params=medioot(user, unique("tx"), amount))
    assert resp.status == 200, await resp.text()
    return user


async def wallet(client: Client, user: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def test_debit_takes_from_the_balance(client: Client) -> None:
    user = await funded(client, "100")
    status, body, _ = await post(
        client, f"/v1/wallets/{user}/debits", {"amount": "30.25", "reference": "order-1"}
    )
    assert status == 201, body
    assert body["debit"]["type"] == "debited"
    assert body["debit"]["amount"] == "30.25"
    assert body["debit"]["provider"] == "shop"
    assert body["wallet"]["balance"] == "69.75"
    assert body["wallet"]["available"] == "69.75"
    assert body["wallet"]["total_debited"] == "30.25"
    w = await wallet(client, user)
    assert (w["balance"], w["total_debited"], w["held"], w["available"]) == (
        "69.75",
        "30.25",
        "0",
        "69.75",
    )


async def test_a_debit_above_available_is_refused_and_records_nothing(client: Client) -> None:
    user = await funded(client, "10")
    status, body, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "10.01"})
    assert (status, body["error"]) == (409, "insufficient_funds")
    w = await wallet(client, user)
    assert (w["balance"], w["event_count"]) == ("10", 1)
    # No wallet at all: nothing available.
    status, body, _ = await post(client, f"/v1/wallets/{unique('nobody')}/debits", {"amount": "1"})
    assert (status, body["error"]) == (409, "insufficient_funds")


async def test_internal_credit_creates_and_funds_a_wallet(client: Client) -> None:
    user = unique("granted")
    status, body, _ = await post(
        client, f"/v1/wallets/{user}/credits", {"amount": "5", "data": {"why": "refund", "n": 1.5}}
    )
    assert status == 201, body
    assert body["credit"]["type"] == "credited"
    assert body["credit"]["data"]["data"] == {"why": "refund", "n": 1.5}
    assert body["wallet"]["balance"] == "5"
    status, body, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "5"})
    assert status == 201 and body["wallet"]["balance"] == "0"


async def test_same_key_same_body_replays_the_first_answer_byte_for_byte(client: Client) -> None:
    user = await funded(client, "10")
    headers = key()
    body = json.dumps({"amount": "4"}).encode()
    first = await client.post(f"/v1/wallets/{user}/debits", data=body, headers=headers)
    again = await client.post(f"/v1/wallets/{user}/debits", data=body, headers=headers)
    assert (first.status, again.status) == (201, 201)
    assert await first.read() == await again.read()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await wallet(client, user))["balance"] == "6"


async def test_same_key_other_body_is_422_and_changes_nothing(client: Client) -> None:
    user = await funded(client, "10")
    headers = key()
    status, _, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "4"}, headers)
    assert status == 201
    status, body, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "5"}, headers)
    assert (status, body["error"]) == (422, "idempotency_key_reused")
    # The same key on another route is another request too.
    status, body, _ = await post(client, f"/v1/wallets/{user}/credits", {"amount": "4"}, headers)
    assert (status, body["error"]) == (422, "idempotency_key_reused")
    assert (await wallet(client, user))["balance"] == "6"


async def test_keys_are_scoped_per_api_key(database_url: str, aiohttp_client: Any) -> None:
    other = "test-spend-key-0002"
    settings = helpers.settings(
        database_url,
        api_keys=[
            {"name": "reader", "key": helpers.READ_KEY, "scopes": ["read"]},
            {"name": "shop", "key": helpers.SPEND_KEY, "scopes": ["read", "spend"]},
            {"name": "raffle", "key": other, "scopes": ["read", "spend"]},
        ],
    )
    from service.app import create_app

    client = await aiohttp_client(create_app(settings))
    user = await funded(client, "10")
    shared = str(uuid.uuid4())
    for auth in (SPEND_AUTH, {"Authorization": f"Bearer {other}"}):
        headers = {**auth, "Idempotency-Key": shared}
        status, body, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "3"}, headers)
        assert status == 201, body
    assert (await wallet(client, user))["balance"] == "4"


async def test_twenty_concurrent_copies_have_one_effect(client: Client) -> None:
    user = await funded(client, "100")
    headers = key()
    body = json.dumps({"amount": "7"}).encode()

    async def one() -> tuple[int, bytes]:
        resp = await client.post(f"/v1/wallets/{user}/debits", data=body, headers=headers)
        return resp.status, await resp.read()

    answers = await asyncio.gather(*(one() for _ in range(20)))
    assert {a for a in answers} == {answers[0]} and answers[0][0] == 201
    assert (await wallet(client, user))["balance"] == "93"


async def test_concurrent_debits_never_overdraw(client: Client) -> None:
    user = await funded(client, "10")

    async def one() -> int:
        status, _, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "3"})
        return int(status)

    statuses = await asyncio.gather(*(one() for _ in range(12)))
    assert sorted(statuses) == [201] * 3 + [409] * 9
    w = await wallet(client, user)
    assert (w["balance"], w["total_debited"]) == ("1", "9")


async def test_hold_capture_part_releases_the_rest(client: Client) -> None:
    user = await funded(client, "50")
    status, body, _ = await post(
        client, f"/v1/wallets/{user}/holds", {"amount": "20", "reference": "cart-9"}
    )
    assert status == 201, body
    hold = body["hold"]
    assert (hold["status"], hold["amount"], hold["reference"]) == ("held", "20", "cart-9")
    assert (body["wallet"]["held"], body["wallet"]["available"]) == ("20", "30")
    # A debit cannot take what is held.
    status, body, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "31"})
    assert status == 409
    status, body, _ = await post(
        client, f"/v1/holds/{hold['hold_id']}/capture", {"amount": "12.50"}
    )
    assert status == 200, body
    assert (body["hold"]["status"], body["hold"]["captured"], body["hold"]["released"]) == (
        "captured",
        "12.50",
        "7.50",
    )
    w = await wallet(client, user)
    assert (w["balance"], w["held"], w["available"], w["total_debited"]) == (
        "37.50",
        "0",
        "37.50",
        "12.50",
    )
    # Once ended, nothing more: not a capture, not a void.
    for action in ("capture", "void"):
        status, body, _ = await post(client, f"/v1/holds/{hold['hold_id']}/{action}", {})
        assert (status, body["error"]) == (409, "hold_not_held")
    resp = await client.get(f"/v1/holds/{hold['hold_id']}", headers=AUTH)
    assert (await resp.json())["status"] == "captured"


async def test_void_releases_everything(client: Client) -> None:
    user = await funded(client, "50")
    _, body, _ = await post(client, f"/v1/wallets/{user}/holds", {"amount": "50"})
    hold_id = body["hold"]["hold_id"]
    assert body["wallet"]["available"] == "0"
    status, body, _ = await post(client, f"/v1/holds/{hold_id}/void", b"")
    assert status == 200, body
    assert (body["hold"]["status"], body["hold"]["released"]) == ("voided", "50")
    assert (await wallet(client, user))["available"] == "50"


async def test_capture_above_the_hold_is_400(client: Client) -> None:
    user = await funded(client, "50")
    _, body, _ = await post(client, f"/v1/wallets/{user}/holds", {"amount": "10"})
    status, body, _ = await post(
        client, f"/v1/holds/{body['hold']['hold_id']}/capture", {"amount": "10.01"}
    )
    assert (status, body["error"]) == (400, "invalid_amount")


async def test_an_expired_hold_stops_counting_then_is_released(
    client: Client, runtime_pool: asyncpg.Pool
) -> None:
    user = await funded(client, "50")
    _, body, _ = await post(client, f"/v1/wallets/{user}/holds", {"amount": "10", "expires_in": 1})
    hold_id = body["hold"]["hold_id"]
    assert (await wallet(client, user))["available"] == "40"
    await asyncio.sleep(1.2)
    # Past expires_at: no longer held, though nothing recorded its release yet.
    w = await wallet(client, user)
    assert (w["held"], w["available"]) == ("0", "50")
    resp = await client.get(f"/v1/holds/{hold_id}", headers=AUTH)
    assert (await resp.json())["status"] == "expired"
    status, body, _ = await post(client, f"/v1/holds/{hold_id}/capture", {})
    assert (status, body["error"]) == (409, "hold_not_held")
    assert await sweep(client.app) >= 1
    rows = await runtime_pool.fetch(
        "SELECT type, amount, data->>'reason' AS reason FROM events"
        " WHERE user_id = $1 ORDER BY position",
        user,
    )
    assert [(r["type"], r["reason"]) for r in rows][-1] == ("hold_released", "expired")
    assert await sweep(client.app) == 0  # released once


async def test_capture_void_race_has_one_winner(client: Client) -> None:
    user = await funded(client, "50")
    _, body, _ = await post(client, f"/v1/wallets/{user}/holds", {"amount": "10"})
    hold_id = body["hold"]["hold_id"]
    results = await asyncio.gather(
        *(post(client, f"/v1/holds/{hold_id}/{a}", {}) for a in ["capture", "void"] * 5)
    )
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] + [409] * 9


async def test_chargeback_after_spending_goes_negative(client: Client) -> None:
    user = unique("charged")
    tx = unique("tx")
    assert (await client.get("/postbacks/medioot", params=medioot(user, tx, "10"))).status == 200
    status, _, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "8"})
    assert status == 201
    resp = await client.get("/postbacks/medioot", params=medioot(user, tx, "10", status="2"))
    assert resp.status == 200
    w = await wallet(client, user)
    assert (w["balance"], w["available"]) == ("-8", "-8")
    status, body, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "0.01"})
    assert (status, body["error"]) == (409, "insufficient_funds")
    status, body, _ = await post(client, f"/v1/wallets/{user}/holds", {"amount": "0.01"})
    assert (status, body["error"]) == (409, "insufficient_funds")


async def test_spending_events_are_in_history_feed_and_verify(
    client: Client, pool: asyncpg.Pool
) -> None:
    user = await funded(client, "30")
    await post(client, f"/v1/wallets/{user}/debits", {"amount": "1"})
    await post(client, f"/v1/wallets/{user}/credits", {"amount": "2"})
    _, body, _ = await post(client, f"/v1/wallets/{user}/holds", {"amount": "3"})
    await post(client, f"/v1/holds/{body['hold']['hold_id']}/capture", {"amount": "1"})
    _, body, _ = await post(client, f"/v1/wallets/{user}/holds", {"amount": "4"})
    await post(client, f"/v1/holds/{body['hold']['hold_id']}/void", {})
    resp = await client.get(f"/v1/wallets/{user}/events", headers=AUTH)
    types = [e["type"] for e in (await resp.json())["events"]]
    assert types == [
        "credited",
        "debited",
        "credited",
        "hold_placed",
        "hold_captured",
        "hold_placed",
        "hold_released",
    ]
    async with pool.acquire() as conn:
        report = await helpers.verify_log(conn)
    assert report.ok, report.differences


BAD_AMOUNTS = ["0", "-1", "1e3", "NaN", "1000000000000000", "", " 1", "1.2.3", "0.000"]


@pytest.mark.parametrize("amount", [*BAD_AMOUNTS, 5, 1.5, None, True])
async def test_bad_amounts_are_400(client: Client, amount: Any) -> None:
    user = await funded(client, "10")
    for path in (f"/v1/wallets/{user}/debits", f"/v1/wallets/{user}/credits"):
        status, body, _ = await post(client, path, {"amount": amount})
        assert status == 400, body
    assert (await wallet(client, user))["event_count"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        SPEND_AUTH,
        {**SPEND_AUTH, "Idempotency-Key": ""},
        {**SPEND_AUTH, "Idempotency-Key": "x" * 256},
        {**SPEND_AUTH, "Idempotency-Key": "caf\u00e9".encode().decode("latin-1")},
    ],
)
async def test_a_missing_or_malformed_idempotency_key_is_400(
    client: Client, headers: dict[str, str]
) -> None:
    user = await funded(client, "10")
    status, body, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "1"}, headers)
    assert (status, body["error"]) == (400, "invalid_idempotency_key")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"amount": "1", "extra": 1}',
        b'{"amount": "1", "data": [1]}',
        b'{"amount": "1", "data": {"a": "\\u0000"}}',
        b'{"amount": "1", "data": {"n": 1e999999}}',
        b'{"amount": "1", "reference": "a\\u0000b"}',
        b'{"amount": "1", "reference": 5}',
        b'{"amount": "1", "expires_in": 0}',
        b'{"amount": "1", "expires_in": 604801}',
        b'{"amount": "1", "expires_in": 1.5}',
        b'{"amount": "1", "data": {"big": "' + b"x" * 5000 + b'"}}',
        b'{"amount": "1", "data": {"a": ' + b"[" * 2000 + b"]" * 2000 + b"}}",
    ],
)
async def test_malformed_bodies_are_400_and_record_nothing(client: Client, body: bytes) -> None:
    user = await funded(client, "10")
    status, answer, _ = await post(client, f"/v1/wallets/{user}/holds", body)
    assert status == (413 if len(body) > 4096 else 400), answer  # server.max_body_bytes
    assert (await wallet(client, user))["event_count"] == 1


async def test_unknown_hold_is_404_and_another_keys_hold_too(
    database_url: str, aiohttp_client: Any
) -> None:
    from service.app import create_app

    other = "test-spend-key-0003"
    settings = helpers.settings(
        database_url,
        api_keys=[
            {"name": "reader", "key": helpers.READ_KEY, "scopes": ["read"]},
            {"name": "shop", "key": helpers.SPEND_KEY, "scopes": ["read", "spend"]},
            {"name": "cashout", "key": other, "scopes": ["spend"]},
        ],
    )
    client = await aiohttp_client(create_app(settings))
    status, body, _ = await post(client, "/v1/holds/h_nope/capture", {})
    assert (status, body["error"]) == (404, "hold_not_found")
    resp = await client.get("/v1/holds/h_nope", headers=AUTH)
    assert resp.status == 404
    user = await funded(client, "10")
    _, body, _ = await post(client, f"/v1/wallets/{user}/holds", {"amount": "1"})
    status, body, _ = await post(
        client,
        f"/v1/holds/{body['hold']['hold_id']}/void",
        {},
        {"Authorization": f"Bearer {other}", "Idempotency-Key": "k1"},
    )
    assert (status, body["error"]) == (404, "hold_not_found")


async def test_spending_needs_the_spend_scope(client: Client) -> None:
    user = await funded(client, "10")
    resp = await client.post(
        f"/v1/wallets/{user}/debits",
        data=b'{"amount": "1"}',
        headers={**AUTH, "Idempotency-Key": "k"},
    )
    assert resp.status == 403


async def test_negative_wallets_are_gauged_and_spending_counted(client: Client) -> None:
    user = unique("exposed")
    tx = unique("tx")
    assert (await client.get("/postbacks/medioot", params=medioot(user, tx, "10"))).status == 200
    status, _, _ = await post(client, f"/v1/wallets/{user}/debits", {"amount": "9.50"})
    assert status == 201
    await client.get("/postbacks/medioot", params=medioot(user, tx, "10", status="2"))
    await refresh_gauges(client.app)
    text = await (await client.get("/metrics")).text()
    samples = {
        line.split(" ")[0]: line.split(" ")[1]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert float(samples["ledger_negative_wallets"]) >= 1
    assert float(samples["ledger_negative_balance_total"]) >= 9.5
    applied = 'ledger_spend_requests_total{operation="debit",outcome="applied"}'
    assert float(samples[applied]) >= 1


async def test_the_log_keeps_the_order_a_batch_decided_in(
    database_url: str, aiohttp_client: Any
) -> None:
    """A debit that a credit of the same batch made possible comes after that credit in the log
    (whatever their Idempotency-Keys), so that reading the log in order never shows a debit
    from an empty wallet."""
    from service.app import create_app

    settings = helpers.settings(database_url, writer={"batch_window_ms": 50.0, "max_inflight": 1})
    client = await aiohttp_client(create_app(settings))
    user = unique("order")

    async def send(path: str, idempotency_key: str) -> int:
        headers = {**SPEND_AUTH, "Idempotency-Key": idempotency_key}
        resp = await client.post(path, data=b'{"amount": "10"}', headers=headers)
        return resp.status

    # Other users' credits keep the one writer busy, so that the next two share a batch.
    busy = [
        asyncio.create_task(send(f"/v1/wallets/{unique('busy')}/credits", unique("k")))
        for _ in range(30)
    ]
    await asyncio.sleep(0.01)
    credit = asyncio.create_task(send(f"/v1/wallets/{user}/credits", "z-credit"))
    await asyncio.sleep(0.005)
    debit = asyncio.create_task(send(f"/v1/wallets/{user}/debits", "a-debit"))
    assert await asyncio.gather(credit, debit) == [201, 201]
    await asyncio.gather(*busy)
    resp = await client.get(f"/v1/wallets/{user}/events", headers=AUTH)
    assert [e["type"] for e in (await resp.json())["events"]] == ["credited", "debited"]
