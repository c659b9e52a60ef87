"""Slow or stalled clients cannot hold the service: a body must arrive in time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from service.app import create_app
from tests import helpers
from tests.helpers import medioot, unique


async def test_a_body_that_trickles_in_is_refused_with_408(
    aiohttp_client: Any, database_url: str, pool: asyncpg.Pool
) -> None:
    settings = helpers.settings(database_url, server={"read_timeout": 0.5})
    client = await aiohttp_client(create_app(settings))

    async def trickle() -> AsyncIterator[bytes]:
        yield b"subid=a"
        await asyncio.sleep(3)  # a stalled client: the rest never comes in time
        yield b"&transid=b"

    slow = asyncio.create_task(
        client.post(
            "/postbacks/medioot",
            data=trickle(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    )
    # Meanwhile the service answers everyone else.
    user = unique()
    resp = await client.get("/postbacks/medioot", params=medioot(user, unique("tx"), "1"))
    assert await resp.text() == "OK"
    answer = await slow
    assert answer.status == 408
    row = await pool.fetchrow(
        "SELECT outcome, http_status, detail FROM postback_log WHERE http_status = 408"
        " ORDER BY id DESC LIMIT 1"
    )
    assert row is not None and (row["outcome"], row["http_status"]) == ("invalid", 408)
    assert "0.5 seconds" in row["detail"]
