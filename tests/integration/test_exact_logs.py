"""Amounts are never rounded through float on their way to the postback log or into an event's
data: inBrain's logged fields and AdGate's receipt JSON keep every number's exact digits, and a
body nested too deeply to check is refused gracefully, never a 500."""

from __future__ import annotations

import functools
import json
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.providers import inbrain
from service.providers.base import Inbound
from service.settings import Settings
from tests import helpers
from tests.helpers import AUTH, MEDIOOT_SECRET, unique
from tests.integration.test_postbacks_inbrain import SECRET, Raw, callback, encode

Client = TestClient[web.Request, web.Application]
TOKEN = "exact-logs-adgate-token-0000"
EXACT = "12345678.123456789012345"
exact_json = functools.partial(json.loads, parse_float=Decimal)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return helpers.settings(
        database_url,
        server={"max_body_bytes": 65536},
        providers=[
            {"name": "medioot", "protocol": "medioot", "secret": MEDIOOT_SECRET},
            {"name": "inbrain", "protocol": "inbrain", "secret": SECRET},
            {"name": "adgate", "protocol": "adgate_receipts", "url_token": TOKEN},
        ],
    )


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Client:
    app_client: Client = await aiohttp_client(create_app(settings))
    return app_client


async def logged(client: Client, provider: str, request_id: str) -> dict[str, Any]:
    resp = await client.get("/v1/postbacks", params={"provider": provider}, headers=AUTH)
    assert resp.status == 200
    for entry in (await resp.json())["postbacks"]:
        if entry["request_id"] == request_id:
            found: dict[str, Any] = entry
            return found
    raise AssertionError(f"no log entry {request_id}")


async def test_inbrain_numbers_are_logged_with_their_exact_digits(client: Client) -> None:
    user, request_id = unique(), unique("rid")
    fields = callback(
        user,
        unique("r"),
        Raw(EXACT),
        RevenueAmount=Raw("0.10000000000000000001"),
        Extra=Raw('{"n": 1.10, "big": 100000000000000000000000000001}'),
        IsTest=True,
    )
    resp = await client.post(
        "/postbacks/inbrain",
        data=encode(fields),
        headers={"Content-Type": "application/json", "X-Request-Id": request_id},
    )
    assert (resp.status, await resp.text()) == (200, "OK")
    params = (await logged(client, "inbrain", request_id))["params"]
    assert params["Reward"] == EXACT
    assert params["RevenueAmount"] == "0.10000000000000000001"
    assert params["Extra"] == '{"n": 1.10, "big": 100000000000000000000000000001}'
    assert params["IsTest"] == "true" and params["PanelistId"] == user
    assert "Sig" not in params


DEEP_INBRAIN = b'{"Sig": "x", "Deep": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"


def test_inbrain_loggable_survives_a_body_nested_too_deeply() -> None:
    inbound = Inbound("POST", (), "application/json", DEEP_INBRAIN, None)
    assert inbrain.loggable(inbound) == {}


async def receipt_event(client: Client, body: bytes) -> dict[str, Any]:
    user, offer = unique(), unique("uo")
    query = {
        "s1": user,
        "shm_upload_offer_id": offer,
        "shm_status": "APPROVED",
        "shm_event_id": unique("ev"),
        "points": "1",
    }
    resp = await client.post(
        f"/postbacks/adgate/{TOKEN}",
        params=query,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, await resp.text()
    resp = await client.get(f"/v1/receipt-offers/adgate/{offer}", headers=AUTH)
    assert resp.status == 200
    offer_body = await resp.json(loads=exact_json)
    event: dict[str, Any] = offer_body["events"][0]
    # The global feed encodes the same event the same way.
    return event


async def test_receipt_numbers_keep_their_exact_digits(client: Client) -> None:
    body = (
        f'{{"total": {EXACT}, "items": [{{"price": 0.1000000000000000000001, "qty": 3}}],'
        ' "tax": 1.50, "big": 100000000000000000000000000001, "huge": 1e999}'
    ).encode()
    data = (await receipt_event(client, body))["data"]
    receipt = data["receipt"]
    assert receipt["total"] == Decimal(EXACT)
    assert receipt["items"] == [{"price": Decimal("0.1000000000000000000001"), "qty": 3}]
    assert receipt["tax"] == Decimal("1.50")
    assert receipt["big"] == 100000000000000000000000000001
    assert receipt["huge"] == 10**999


async def test_receipt_numbers_are_json_numbers_in_the_api(client: Client) -> None:
    event = await receipt_event(client, f'{{"total": {EXACT}}}'.encode())
    resp = await client.get("/v1/wallets/" + event["user_id"] + "/events", headers=AUTH)
    text = await resp.text()
    assert f'"total":{EXACT}' in text.replace(" ", "")


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 1e1001}',  # beyond numeric's exponent
        b'{"n": 0.' + b"1" * 16_300 + b"e-100}",  # beyond numeric's scale
        b"[" * 5_000 + b"]" * 5_000,  # deeper than can be checked
        b'{"n": NaN}',
    ],
    ids=["exponent", "scale", "deep", "nan"],
)
async def test_receipts_jsonb_cannot_hold_exactly_are_kept_as_text(
    client: Client, body: bytes
) -> None:
    data = (await receipt_event(client, body))["data"]
    assert "receipt" not in data
    assert data["receipt_text"] == body.decode()[:16384]
