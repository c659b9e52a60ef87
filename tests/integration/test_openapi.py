"""The OpenAPI document, and schemathesis driving the live service with it: no 5xx, and every
answer matching the document."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from service.app import create_app
from service.web.catalogue import OPERATIONS
from tests import helpers
from tests.helpers import AUTH, SPEND_AUTH, medioot, unique


@pytest.fixture(scope="module")
def live_url(database_url: str) -> Iterator[str]:
    """The whole service on a real port, in a thread of its own for this module."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(helpers.settings(database_url)), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    # Something to find: a wallet with events.
    requests.get(f"{url}/postbacks/medioot", params=medioot("schema-user", unique("tx"), "1.5"))
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def api_schema(live_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{live_url}/v1/openapi.json", headers=SPEND_AUTH)


async def test_document_describes_every_v1_route(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/v1/openapi.json", headers=AUTH)
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    served = {
        r.resource.canonical
        for r in client.app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/v1/")
    }
    assert set(doc["paths"]) == served == {op.path for op in OPERATIONS}
    wallet = doc["components"]["schemas"]["WalletBody"]
    assert wallet["properties"]["balance"] == {"type": "string"}
    for path in doc["paths"].values():
        for operation in path.values():
            success = "201" if operation["operationId"] in CREATING else "200"
            assert {success, "400", "401", "403", "404", "503"} <= operation["responses"].keys()
    debits = doc["paths"]["/v1/wallets/{user_id}/debits"]["post"]
    assert {"409", "422"} <= debits["responses"].keys()
    assert debits["requestBody"]["required"] is True
    header = [p for p in debits["parameters"] if p["in"] == "header"]
    assert [(p["name"], p["required"]) for p in header] == [("Idempotency-Key", True)]
    wallet_fields = doc["components"]["schemas"]["WalletBody"]["properties"]
    assert {"held", "available", "total_debited"} <= wallet_fields.keys()
    assert (await client.get("/v1/openapi.json")).status == 401


CREATING = {"post_debit", "post_credit", "post_hold"}


def test_live_service_matches_its_document(api_schema: Any, live_url: str) -> None:
    """Every operation, with cases generated from the document: no 5xx, every status, header,
    content type and body as documented. The key holds scopes read and spend, so spending
    requests are made for real (with the Idempotency-Keys the cases generate)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    # schemathesis leaves out the document's own address
    assert {o.path for o in operations} == {o.path for o in OPERATIONS} - {"/v1/openapi.json"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            # Not "schema-valid data must be accepted": a cursor is opaque, so a well-formed
            # string the API never handed out is rightly a 400, and no schema can say which
            # strings were handed out. Every other check runs, 5xx and conformance included.
            case.call_and_validate(
                base_url=live_url, headers=SPEND_AUTH, excluded_checks=[positive_data_acceptance]
            )

        check()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/wallets/a%00b",
        "/v1/wallets/a%00b/events",
        "/v1/receipt-offers/adgate/x%00y",
        "/v1/postbacks?provider=a%00b",
        "/v1/wallets/%ED%A0%80",
    ],
)
async def test_text_the_database_cannot_hold_is_400(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
) -> None:
    resp = await client.get(path, headers=AUTH)
    assert resp.status in (400, 404), await resp.text()


async def test_receipt_offer_history_is_documented_as_paged(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    doc = await (await client.get("/v1/openapi.json", headers=AUTH)).json()
    operation = doc["paths"]["/v1/receipt-offers/{provider}/{upload_offer_id}"]["get"]
    assert {p["name"] for p in operation["parameters"] if p["in"] == "query"} == {"after", "limit"}
    body = doc["components"]["schemas"]["ReceiptOfferBody"]
    assert body["properties"]["next"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert "next" in body["required"] and "events" in body["required"]
