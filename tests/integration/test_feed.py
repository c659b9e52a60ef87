"""The global feed: every event exactly once, in a consistent order, however writers' commits
interleave; long-polling; cursors."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from service.web.api import encode_feed_cursor
from tests import helpers
from tests.helpers import AUTH, medioot, unique

Client = TestClient  # type: ignore[type-arg]

_INSERT = """
INSERT INTO events (provider, key, type, user_id, amount, provider_ref)
VALUES ('feedtest', $1, 'credited', $2, 1, $1) RETURNING position
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
