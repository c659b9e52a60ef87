"""The service through a real PgBouncer in transaction pooling (`database.pgbouncer = true`):
postbacks, wallets, spending, the postback log and the feed, whose long-polls LISTEN on a direct
`database.listen_url` or, without one, poll. Migrations go to the server directly (owner_url)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from service import keys
from service.app import create_app
from service.db.connection import connect
from service.embedded import RUNTIME_ROLE
from service.settings import Settings
from tests import helpers, pgbouncer
from tests.helpers import AUTH, SPEND_AUTH, medioot, unique

Client = TestClient  # type: ignore[type-arg]

pytestmark = pytest.mark.skipif(
    pgbouncer.binary() is None,
    reason="pgbouncer is not installed (Debian: apt-get install pgbouncer)",
)

POOL_SIZE = 3  # PgBouncer's server connections per database and user: fewer than the clients'


@pytest.fixture(scope="module")
def bouncer(database_url: str) -> Iterator[pgbouncer.Bouncer]:
    users = pgbouncer.users_of(database_url, helpers.runtime_url(database_url))
    running = pgbouncer.start(database_url, users, pool_size=POOL_SIZE)
    try:
        yield running
    finally:
        running.stop()


def bounced_settings(database_url: str, bouncer: pgbouncer.Bouncer, **database: Any) -> Settings:
    runtime = helpers.runtime_url(database_url)
    return helpers.settings(
        database_url,
        database={
            "url": bouncer.url(runtime),
            "owner_url": database_url,  # migrations connect directly
            "pgbouncer": True,
            "pool_max_size": 10,
            "timeout": 5.0,
            **database,
        },
    )


@pytest.fixture(params=["polling", "listen_url"])
async def client(
    request: pytest.FixtureRequest,
    aiohttp_client: Any,
    database_url: str,
    bouncer: pgbouncer.Bouncer,
) -> Client:
    extra = {}
    if request.param == "listen_url":
        extra["listen_url"] = helpers.runtime_url(database_url)
    settings = bounced_settings(database_url, bouncer, **extra)
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


@pytest.fixture
async def owner(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def postback(client: Client, params: dict[str, str]) -> str:
    resp = await client.get("/postbacks/medioot", params=params)
    assert resp.status == 200
    return await resp.text()


async def wallet(client: Client, user: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def spend(
    client: Client, path: str, body: dict[str, str], idempotency_key: str | None = None
) -> tuple[int, Any]:
    headers = {**SPEND_AUTH, "Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    resp = await client.post(path, data=json.dumps(body).encode(), headers=headers)
    return resp.status, await resp.json()


async def test_pgbouncer_refuses_the_startup_setting_a_direct_pool_sends(
    database_url: str, bouncer: pgbouncer.Bouncer
) -> None:
    # Why `database.pgbouncer` exists: the chain key cannot go in the startup packet.
    with pytest.raises(asyncpg.PostgresError, match="unsupported startup parameter"):
        await asyncpg.connect(
            bouncer.url(helpers.runtime_url(database_url)),
            server_settings={"ledger.chain_pads": helpers.chain_key().pads()},
        )


async def test_credit_duplicate_reversal_and_the_wallet(
    client: Client, owner: asyncpg.Connection
) -> None:
    user, transid = unique("pgb"), unique("tx")
    assert await postback(client, medioot(user, transid, "4.25")) == "OK"
    assert await postback(client, medioot(user, transid, "4.25")) == "DUP"
    assert await postback(client, medioot(user, unique("tx"), "1")) == "OK"
    assert Decimal((await wallet(client, user))["balance"]) == Decimal("5.25")
    assert await postback(client, medioot(user, transid, "4.25", status="2")) == "OK"
    assert Decimal((await wallet(client, user))["balance"]) == 1
    # Every event was chained with the key set inside its writing transaction.
    report = await helpers.verify_log(owner)
    assert report.ok, report.differences


async def test_spending_debit_hold_capture_with_idempotency(client: Client) -> None:
    user = unique("pgb")
    assert await postback(client, medioot(user, unique("tx"), "50")) == "OK"
    again = str(uuid.uuid4())
    first = await spend(client, f"/v1/wallets/{user}/debits", {"amount": "5"}, again)
    assert first[0] == 201, first
    assert await spend(client, f"/v1/wallets/{user}/debits", {"amount": "5"}, again) == first
    status, body = await spend(client, f"/v1/wallets/{user}/debits", {"amount": "6"}, again)
    assert status == 422, body
    status, body = await spend(client, f"/v1/wallets/{user}/holds", {"amount": "20"})
    assert status == 201, body
    hold = body["hold"]["hold_id"]
    status, body = await spend(client, f"/v1/holds/{hold}/capture", {"amount": "12.50"})
    assert status == 200, body
    assert (body["hold"]["captured"], body["hold"]["released"]) == ("12.50", "7.50")
    w = await wallet(client, user)
    assert [Decimal(w[k]) for k in ("balance", "held", "total_debited")] == [
        Decimal("32.50"),
        0,
        Decimal("17.50"),
    ]


async def test_the_postback_log_api(client: Client) -> None:
    user, transid = unique("pgb"), unique("tx")
    assert await postback(client, medioot(user, transid, "3")) == "OK"
    assert await postback(client, medioot(user, transid, "3")) == "DUP"
    forged = medioot(user, unique("tx"), "3", secret="not-the-secret")
    resp = await client.get("/postbacks/medioot", params=forged)
    assert resp.status == 403
    resp = await client.get("/v1/postbacks", headers=AUTH, params={"user": user, "limit": "10"})
    assert resp.status == 200, await resp.text()
    found = (await resp.json())["postbacks"]
    assert [e["outcome"] for e in found] == ["rejected", "duplicate", "credited"]


async def end_cursor(client: Client) -> str:
    cursor = None
    while True:
        params = {"limit": "1000", **({"after": cursor} if cursor else {})}
        resp = await client.get("/v1/events", params=params, headers=AUTH)
        page = await resp.json()
        cursor = page["next"]
        if not page["events"]:
            return str(cursor)


async def test_a_long_poll_wakes_on_a_new_postback(
    client: Client, owner: asyncpg.Connection
) -> None:
    cursor = await end_cursor(client)
    params = {"after": cursor, "limit": "10", "wait": "10"}
    poll = asyncio.create_task(client.get("/v1/events", params=params, headers=AUTH))
    await asyncio.sleep(0.5)  # let the poll reach its wait
    assert not poll.done()
    user = unique("pgb")
    assert await postback(client, medioot(user, unique("tx"), "2")) == "OK"
    sent = time.monotonic()
    resp = await poll
    woken = time.monotonic() - sent
    page = await resp.json()
    assert [e["user_id"] for e in page["events"]] == [user]
    assert woken < 1.5, f"the long-poll took {woken:.2f}s to see the new event"
    feed = client.app[keys.FEED]  # type: ignore[union-attr]
    listening = await owner.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN %'"
    )
    if feed._dsn is None:  # polling: nothing LISTENs, not even through PgBouncer
        assert listening == 0
    else:
        assert listening >= 1


async def test_twenty_concurrent_postbacks_for_one_user_with_a_small_pool(
    client: Client, owner: asyncpg.Connection
) -> None:
    user = unique("pgb")
    answers = await asyncio.gather(
        *(postback(client, medioot(user, unique("tx"), "1.5")) for _ in range(20))
    )
    assert answers == ["OK"] * 20
    assert Decimal((await wallet(client, user))["balance"]) == 30
    pools = await owner.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = current_database()",
        RUNTIME_ROLE,
    )
    # PgBouncer held the service's 10 client connections on at most POOL_SIZE server ones
    # (one more: a direct LISTEN connection).
    assert pools <= POOL_SIZE + 1
