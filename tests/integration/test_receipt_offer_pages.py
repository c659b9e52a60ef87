"""A receipt offer's history is paged like a wallet's events: `after` and `limit`, and a `next`
cursor that is null on the last page, however many events the offer has."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.domain.receipt_offers import AWARD_PENDING, MANUAL_REVIEW
from service.settings import Settings
from tests.helpers import AUTH, unique
from tests.integration.test_postbacks_adgate import NAME, adgate_settings, params, send

Client = TestClient[web.Request, web.Application]
Json = dict[str, Any]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return adgate_settings(database_url)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Client:
    app_client: Client = await aiohttp_client(create_app(settings))
    return app_client


async def offer_with_events(client: Client, count: int) -> tuple[str, str]:
    user, offer = unique(), unique("uo")
    # One at a time: positions then follow the order sent.
    for i in range(count):
        status = MANUAL_REVIEW if i % 2 == 0 else AWARD_PENDING
        assert (await send(client, params(user, offer, unique("ev"), status)))[0] == 200
    return user, offer


async def page(client: Client, offer: str, **query: str) -> Json:
    resp = await client.get(f"/v1/receipt-offers/{NAME}/{offer}", params=query, headers=AUTH)
    assert resp.status == 200, await resp.text()
    body: Json = await resp.json()
    return body


async def test_history_longer_than_a_page_is_paged_with_a_next_cursor(client: Client) -> None:
    _user, offer = await offer_with_events(client, 7)
    positions: list[int] = []
    cursor: str | None = None
    sizes = []
    while True:
        body = await page(client, offer, limit="3", **({"after": cursor} if cursor else {}))
        assert body["event_count"] == 7 and body["status"] == MANUAL_REVIEW
        sizes.append(len(body["events"]))
        positions += [e["position"] for e in body["events"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert sizes == [3, 3, 1]
    assert positions == sorted(positions) and len(set(positions)) == 7
    # A plain position works as `after` too.
    rest = await page(client, offer, after=str(positions[4]))
    assert [e["position"] for e in rest["events"]] == positions[5:] and rest["next"] is None


async def test_a_full_last_page_says_there_is_no_more(client: Client) -> None:
    _user, offer = await offer_with_events(client, 4)
    first = await page(client, offer, limit="2")
    assert len(first["events"]) == 2 and first["next"]
    second = await page(client, offer, limit="2", after=first["next"])
    assert len(second["events"]) == 2 and second["next"] is None


async def test_default_page_is_100_events_not_the_whole_history(client: Client) -> None:
    user, offer = unique(), unique("uo")
    await asyncio.gather(
        *(send(client, params(user, offer, unique("ev"), MANUAL_REVIEW)) for _ in range(101))
    )
    first = await page(client, offer)
    assert first["event_count"] == 101
    assert len(first["events"]) == 100 and first["next"]
    second = await page(client, offer, after=first["next"])
    assert len(second["events"]) == 1 and second["next"] is None


@pytest.mark.parametrize("query", [{"after": "garbage!"}, {"limit": "0"}, {"limit": "1001"}])
async def test_bad_cursor_or_limit_is_400(client: Client, query: dict[str, str]) -> None:
    _user, offer = await offer_with_events(client, 1)
    resp = await client.get(f"/v1/receipt-offers/{NAME}/{offer}", params=query, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("invalid_")
