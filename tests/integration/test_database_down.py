"""Database outages: postbacks answer 503 (never OK without a commit, never 500), /readyz turns
503, and the service serves again by itself once the database is back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from ops.chaos.dbproxy import DatabaseProxy
from service.app import create_app
from tests import helpers
from tests.helpers import AUTH, medioot, unique
from tests.integration.test_pages import sign_in

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[tuple[DatabaseProxy, str]]:
    proxy = DatabaseProxy(database_url)
    dsn = await proxy.start()
    try:
        yield proxy, dsn
    finally:
        await proxy.close()


@pytest.fixture
async def proxied(aiohttp_client: Any, proxy: tuple[DatabaseProxy, str]) -> Client:
    _, dsn = proxy
    settings = helpers.settings(dsn, database={"timeout": 1.0})
    client: Client = await aiohttp_client(create_app(settings))
    return client


async def events_for(pool: asyncpg.Pool, ref: str) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM events WHERE provider_ref = $1", ref)
    return n


@pytest.mark.parametrize("failure", ["cut", "stall"])
async def test_outage_answers_503_and_recovers_without_restart(
    proxied: Client, proxy: tuple[DatabaseProxy, str], pool: asyncpg.Pool, failure: str
) -> None:
    db, _ = proxy
    user = unique()
    assert (
        await proxied.get("/postbacks/medioot", params=medioot(user, unique("tx"), "1"))
    ).status == 200
    assert (await proxied.get("/readyz")).status == 200
    assert (await sign_in(proxied)).status == 303  # an operator page session

    getattr(db, failure)()
    during = medioot(user, unique("tx"), "5")
    for _ in range(3):
        resp = await proxied.get("/postbacks/medioot", params=during)
        assert resp.status == 503
        assert await resp.text() != "OK"
    assert (await proxied.get("/readyz")).status == 503
    assert REGISTRY.get_sample_value("ledger_database_up") == 0
    resp = await proxied.get(f"/v1/wallets/{user}", headers=AUTH)
    assert resp.status == 503
    assert (await resp.json())["error"] == "database_unavailable"
    for page in ("/ui/", "/ui/sign-in", f"/ui/user?id={user}"):
        resp = await proxied.get(page, allow_redirects=False)
        assert resp.status == 503 and resp.content_type == "text/html", page
        assert "database is not answering" in await resp.text()
    assert await events_for(pool, during["transid"]) == 0

    db.restore()
    resp = await proxied.get("/postbacks/medioot", params=during)
    assert (resp.status, await resp.text()) == (200, "OK")
    assert (await proxied.get("/readyz")).status == 200
    assert REGISTRY.get_sample_value("ledger_database_up") == 1
    assert await events_for(pool, during["transid"]) == 1
    resp = await proxied.get(f"/v1/wallets/{user}", headers=AUTH)
    assert (await resp.json())["balance"] == "6"
    assert (await proxied.get("/ui/", allow_redirects=False)).status == 200


async def test_a_replica_that_refuses_the_connection_answers_503_not_500(
    aiohttp_client: Any, database_url: str
) -> None:
    from tests.conftest import with_database

    # A read_url naming a database the server does not have: refused, whatever is retried.
    nowhere = with_database(helpers.runtime_url(database_url), "no_such_replica_database")
    settings = helpers.settings(database_url, database={"read_url": nowhere})
    client: Client = await aiohttp_client(create_app(settings))
    for _ in range(2):
        resp = await client.get(f"/v1/wallets/{unique()}", headers=AUTH)
        assert resp.status == 503
        assert (await resp.json())["error"] == "database_unavailable"
    # Writes, on the primary, are not affected.
    assert (
        await client.get("/postbacks/medioot", params=medioot(unique(), unique("tx"), "1"))
    ).status == 200
