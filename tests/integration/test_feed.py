"""The global feed: every event exactly once, in a consistent order, however writers' commits
interleave; long-polling; cursors."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from service import keys
from service.app import create_app
from service.db import read
from service.settings import Settings
from service.web.api import encode_feed_cursor
from tests import helpers
from tests.helpers import AUTH, medioot, unique

Client = TestClient  # type: ignore[type-arg]

_INSERT = """
INSERT INTO events (provider, key, type, user_id, amount, provider_ref)
VALUES ('medioot', $1, 'credited', $2, 1, $1) RETURNING position
"""


async def feed(client: Client, after: str | None, limit: int = 3, wait: str = "0") -> Any:
    params = {"limit": str(limit), "wait": wait}
    if after is not None:
        params["after"] = after
    resp = await client.get("/v1/events", params=params, headers=AUTH)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def end_cursor(client: Client) -> str:
    cursor = None
    while True:
        page = await feed(client, cursor, limit=1000)
        cursor = page["next"]
        if not page["events"]:
            return str(cursor)


async def test_follower_sees_every_event_once_under_concurrent_writers(
    client: Client, database_url: str
) -> None:
    start = await end_cursor(client)
    committed: list[int] = []
    writers_done = asyncio.Event()

    async def writer(n: int) -> None:
        conn = await asyncpg.connect(
            helpers.runtime_url(database_url),
            server_settings={"ledger.chain_pads": helpers.chain_key().pads()},
        )
        try:
            for i in range(15):
                async with conn.transaction():
                    user = f"feed-writer-{n}"
                    # As the write path does: the user's lock before the event gets a position.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"user:{user}"
                    )
                    position = await conn.fetchval(_INSERT, unique(f"w{n}-{i}"), user)
                    # A random delay between taking the position and committing: commits land
                    # out of position order, which is what breaks "position > last seen".
                    await asyncio.sleep(random.uniform(0, 0.03))
                committed.append(position)
        finally:
            await conn.close()

    seen: list[int] = []
    txids: list[int] = []

    async def follower() -> None:
        cursor: str = start
        while True:
            done = writers_done.is_set()
            page = await feed(client, cursor, limit=3)
            seen.extend(e["position"] for e in page["events"])
            cursor = page["next"]
            txids.extend(_txid(cursor) for _ in page["events"][-1:])
            if done and not page["events"]:
                return

    follow = asyncio.create_task(follower())
    await asyncio.gather(*(writer(n) for n in range(8)))
    writers_done.set()
    await follow

    assert len(seen) == len(set(seen)), "an event was served twice"
    assert sorted(seen) == sorted(committed), "an event was skipped"
    assert txids == sorted(txids), "the feed went back in time"


def _txid(cursor: str) -> int:
    import base64

    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    return int(raw[1:].split(".")[0])


async def test_pages_are_oldest_first_and_next_is_always_a_cursor(client: Client) -> None:
    user = unique()
    start = await end_cursor(client)
    for i in range(5):
        await client.get("/postbacks/medioot", params=medioot(user, unique(f"tx{i}"), str(i + 1)))
    page = await feed(client, start, limit=2)
    assert [e["amount"] for e in page["events"]] == ["1", "2"]
    assert {
        "position",
        "type",
        "provider",
        "provider_ref",
        "amount",
        "recorded_at",
        "data",
        "hash",
        "user_id",
    } <= page["events"][0].keys()
    rest = await feed(client, page["next"], limit=10)
    assert [e["amount"] for e in rest["events"]] == ["3", "4", "5"]
    empty = await feed(client, rest["next"], limit=10)
    assert empty["events"] == [] and empty["next"] == rest["next"]
    first = await feed(client, None, limit=1)
    assert first["next"]


async def test_long_poll_returns_promptly_on_a_new_event(client: Client) -> None:
    cursor = await end_cursor(client)
    started = time.monotonic()
    poll = asyncio.create_task(feed(client, cursor, limit=10, wait="10"))
    await asyncio.sleep(0.3)  # let the poll reach its wait
    user = unique()
    resp = await client.get("/postbacks/medioot", params=medioot(user, unique("tx"), "9"))
    assert await resp.text() == "OK"
    page = await poll
    elapsed = time.monotonic() - started
    assert [e["user_id"] for e in page["events"]] == [user]
    assert elapsed < 5, f"long-poll took {elapsed:.1f}s to see a new event"


async def test_long_poll_with_nothing_new_waits_then_answers_empty(client: Client) -> None:
    cursor = await end_cursor(client)
    started = time.monotonic()
    page = await feed(client, cursor, wait="0.5")
    assert page["events"] == [] and page["next"] == cursor
    assert time.monotonic() - started >= 0.45


async def test_bad_cursor_limit_and_wait_are_400(client: Client) -> None:
    for params in (
        {"after": "garbage"},
        {"after": "12"},  # the feed takes only its own opaque cursors
        {"after": encode_feed_cursor(1, 1) + "x"},
        {"limit": "0"},
        {"limit": "x"},
        {"wait": "-1"},
        {"wait": "abc"},
        {"wait": "1e3"},
    ):
        resp = await client.get("/v1/events", params=params, headers=AUTH)
        assert resp.status == 400, params
        assert (await resp.json())["error"].startswith("invalid_")


async def test_feed_needs_the_read_scope(client: Client) -> None:
    assert (await client.get("/v1/events")).status == 401


async def test_an_abandoned_long_poll_ends_soon_after_its_client_leaves(
    client: Client, settings: Settings
) -> None:
    cursor = await end_cursor(client)
    # Served as `serve` serves it: aiohttp's test server cancels a handler whose client
    # disconnects, run_app does not (a postback's handler must finish what it started).
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        params = {"after": cursor, "wait": "30"}
        with capture_logs() as logs:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/v1/events"
                poll = asyncio.create_task(session.get(url, params=params, headers=AUTH))
                await asyncio.sleep(0.5)  # let the poll reach its wait
                poll.cancel()  # the client gives up: its connection closes
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            await _until(
                lambda: any(e.get("route") == "/v1/events" for e in logs),
                "the abandoned long-poll to end",
                limit=5,
            )
        assert app[keys.FEED].waiting == 0
    finally:
        await runner.cleanup()


async def test_waiting_readers_query_only_once_something_is_servable_to_them(
    client: Client, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cursor = await end_cursor(client)
    queries: list[int] = []
    real_feed = read.feed

    async def counted(*args: Any) -> Any:
        queries.append(1)
        return await real_feed(*args)

    monkeypatch.setattr(read, "feed", counted)
    # An open transaction older than the events below holds the feed back: they commit (and
    # notify) but are not servable until it ends.
    blocker = await asyncpg.connect(database_url)
    readers = 30
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.fetchval("SELECT pg_current_xact_id()")
        polls = [
            asyncio.create_task(feed(client, cursor, limit=10, wait="20")) for _ in range(readers)
        ]
        await _until(lambda: len(queries) == readers, "every reader's first query")
        user = unique()
        for i in range(3):
            resp = await client.get(
                "/postbacks/medioot", params=medioot(user, unique(f"t{i}"), "1")
            )
            assert await resp.text() == "OK"
        await asyncio.sleep(2.5)  # notifications and more than two periodic checks
        assert len(queries) == readers, "readers queried while nothing was servable to them"
        await transaction.commit()
    finally:
        await blocker.close()
    pages = await asyncio.gather(*polls)
    assert all([e["user_id"] for e in page["events"]] == [user] * 3 for page in pages)
    assert len(queries) == 2 * readers


async def _until(condition: Any, what: str, limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"waited {limit}s for {what}"
        await asyncio.sleep(0.02)
