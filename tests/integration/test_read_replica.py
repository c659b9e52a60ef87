"""`database.read_url`: the read-only routes on a real streaming replica, the rest on the primary.

A primary and its hot standby of their own (tests/replica.py), built for this module from the
embedded server's binaries. Pausing the standby's replay shows which server a route reads: a
postback written then is in the primary's feed, and not in the replica's wallets or log.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service import keys
from service.app import create_app
from service.db.connection import ensure_database, migrate, with_user
from service.embedded import DATABASE, RUNTIME_ROLE
from service.settings import ConfigError, parse
from tests import helpers
from tests.helpers import AUTH, medioot, unique
from tests.replica import ReplicaPair

Client = TestClient[web.Request, web.Application]
DEADLINE = 15.0  # seconds a write may take to reach the replica


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicaPair]:
    replicas = ReplicaPair()
    try:
        replicas.start()
        asyncio.run(_create_ledger(replicas))
        yield replicas
    finally:
        replicas.stop()


async def _create_ledger(replicas: ReplicaPair) -> None:
    await ensure_database(replicas.primary.dsn("postgres"), DATABASE)
    await migrate(
        replicas.primary.dsn(DATABASE), runtime_role=RUNTIME_ROLE, create_role=True, wait=10
    )
    # Until the replica has the database and the role, connecting to it fails as a
    # configuration error would (no such database), not as an outage.
    await caught_up(replicas)


async def caught_up(replicas: ReplicaPair) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    primary = await asyncpg.connect(replicas.primary.dsn("postgres"))
    replica = await asyncpg.connect(replicas.replica.dsn("postgres"))
    try:
        target = await primary.fetchval("SELECT pg_current_wal_lsn()")

        async def replayed() -> bool:
            lag = await replica.fetchval("SELECT $1::pg_lsn - pg_last_wal_replay_lsn()", target)
            return bool(lag <= 0)

        await until(replayed, "the replica catching up")
    finally:
        await primary.close()
        await replica.close()


def replica_settings(pair: ReplicaPair) -> Any:
    return helpers.settings(
        pair.primary.dsn(DATABASE),
        database={"read_url": with_user(pair.replica.dsn(DATABASE), RUNTIME_ROLE)},
    )


@pytest.fixture
async def client(aiohttp_client: Any, pair: ReplicaPair) -> Client:
    if not pair.replica.started:
        await asyncio.to_thread(pair.replica.start)
    result: Client = await aiohttp_client(create_app(replica_settings(pair)))
    return result


@pytest.fixture
async def replica_conn(pair: ReplicaPair) -> AsyncIterator[asyncpg.Connection]:
    """The replica's superuser: to pause and resume its replay."""
    conn = await asyncpg.connect(pair.replica.dsn("postgres"))
    try:
        yield conn
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_wal_replay_resume()")
            await conn.close()


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {DEADLINE:g} s")
        await asyncio.sleep(0.05)


async def credit(client: Client, user: str, reward: str = "5") -> str:
    """A credit postback for `user`; its transaction id."""
    transaction = unique("t")
    resp = await client.get("/postbacks/medioot", params=medioot(user, transaction, reward))
    assert resp.status == 200, await resp.text()
    return transaction


async def in_feed(client: Client, user: str) -> bool:
    after = ""
    while True:
        resp = await client.get(
            "/v1/events", params={"after": after} if after else {}, headers=AUTH
        )
        assert resp.status == 200
        page = await resp.json()
        if any(e["user_id"] == user for e in page["events"]):
            return True
        if not page["events"]:
            return False
        after = page["next"]


async def test_a_postback_reaches_the_read_routes_once_replicated(client: Client) -> None:
    user = unique()
    await credit(client, user, "7.5")

    async def visible() -> bool:
        resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
        assert resp.status in (200, 404), await resp.text()
        return resp.status == 200

    await until(visible, "the wallet on the replica")
    wallet = await (await client.get(f"/v1/wallets/{user}", headers=AUTH)).json()
    assert wallet["balance"] == "7.5"
    events = await (await client.get(f"/v1/wallets/{user}/events", headers=AUTH)).json()
    assert [e["amount"] for e in events["events"]] == ["7.5"]
    log = await (await client.get("/v1/postbacks", params={"user": user}, headers=AUTH)).json()
    assert [p["outcome"] for p in log["postbacks"]] == ["credited"]
    one = await client.get(f"/v1/postbacks/{log['postbacks'][0]['id']}", headers=AUTH)
    assert one.status == 200


async def test_read_routes_read_the_replica_and_the_feed_the_primary(
    client: Client, replica_conn: asyncpg.Connection
) -> None:
    await replica_conn.execute("SELECT pg_wal_replay_pause()")

    async def paused() -> bool:
        state = await replica_conn.fetchval("SELECT pg_get_wal_replay_pause_state()")
        return bool(state == "paused")

    await until(paused, "replay paused")
    user = unique()
    # A write: the primary answers while the replica is frozen.
    transaction = await credit(client, user)
    await until(lambda: in_feed(client, user), "the event in the primary's feed")
    # The replica has not replayed it: the read routes do not see it.
    assert (await client.get(f"/v1/wallets/{user}", headers=AUTH)).status == 404
    events = await (await client.get(f"/v1/wallets/{user}/events", headers=AUTH)).json()
    assert events["events"] == []
    log = await (await client.get("/v1/postbacks", params={"user": user}, headers=AUTH)).json()
    assert log["postbacks"] == []
    # The operator pages too (signing in writes its session on the primary).
    assert (await sign_in(client)).status == 303
    page = await client.get("/ui/postbacks", params={"user": user})
    assert page.status == 200 and transaction not in await page.text()

    await replica_conn.execute("SELECT pg_wal_replay_resume()")

    async def replicated() -> bool:
        return (await client.get(f"/v1/wallets/{user}", headers=AUTH)).status == 200

    await until(replicated, "the wallet once replay resumes")
    page = await client.get("/ui/postbacks", params={"user": user})
    assert page.status == 200 and transaction in await page.text()


async def test_replica_down_reads_503_writes_and_feed_work(
    client: Client, pair: ReplicaPair, aiohttp_client: Any
) -> None:
    user = unique()
    await credit(client, user)
    await until(lambda: _status(client, f"/v1/wallets/{user}", 200), "the wallet on the replica")
    assert (await sign_in(client)).status == 303
    await asyncio.to_thread(pair.replica.stop, "fast")
    try:
        for path in (
            f"/v1/wallets/{user}",
            f"/v1/wallets/{user}/events",
            "/v1/postbacks",
            "/v1/postbacks/1",
            "/v1/receipt-offers/adgate/1",
        ):
            resp = await client.get(path, headers=AUTH)
            assert resp.status == 503, (path, resp.status, await resp.text())
            assert (await resp.json())["error"] == "database_unavailable"
        # The pages say so in HTML: the session check, on the primary, let them through.
        for path in ("/ui/", f"/ui/user?id={user}", "/ui/postbacks", "/ui/postbacks/1"):
            resp = await client.get(path, allow_redirects=False)
            assert resp.status == 503, (path, resp.status)
            assert resp.content_type == "text/html"
        # Writes, the feed and readiness are the primary's.
        other = unique()
        await credit(client, other)
        assert await in_feed(client, other)
        assert (await client.get("/readyz")).status == 200
        # Start-up does not wait for the replica: a service started now serves writes.
        started: Client = await aiohttp_client(create_app(replica_settings(pair)))
        assert (await started.get(f"/v1/wallets/{user}", headers=AUTH)).status == 503
        await credit(started, unique())
    finally:
        await asyncio.to_thread(pair.replica.start)
    await until(lambda: _status(client, f"/v1/wallets/{other}", 200), "reads again once it is back")


async def _status(client: Client, path: str, status: int) -> bool:
    return (await client.get(path, headers=AUTH)).status == status


async def test_without_read_url_reads_use_the_primary_pool(
    aiohttp_client: Any, settings: Any
) -> None:
    assert settings.database.read_url == ""
    client: Client = await aiohttp_client(create_app(settings))
    assert client.app[keys.READ_POOL] is client.app[keys.POOL]
    user = unique()
    await credit(client, user)
    assert (await client.get(f"/v1/wallets/{user}", headers=AUTH)).status == 200


async def sign_in(client: Client) -> Any:
    resp = await client.get("/ui/sign-in")
    token = re.search(r'name="token" value="([^"]+)"', await resp.text())
    assert token is not None
    data = {"token": token.group(1), "key": helpers.READ_KEY, "next": "/ui/"}
    return await client.post("/ui/sign-in", data=data, allow_redirects=False)


def test_read_url_needs_url_and_may_come_from_an_unset_variable() -> None:
    with pytest.raises(ConfigError, match=r"database\.read_url: needs database\.url"):
        parse({"database": {"read_url": "postgresql://r@127.0.0.1/ledger"}}, {})
    raw = {"database": {"url": "postgresql://a@127.0.0.1/ledger", "read_url": "${READ_URL}"}}
    assert parse(raw, {}).database.read_url == ""
    assert parse(raw, {"READ_URL": "postgresql://r@h/l"}).database.read_url == "postgresql://r@h/l"
