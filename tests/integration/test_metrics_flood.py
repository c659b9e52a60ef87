"""A flood of /metrics scrapes costs a bounded number of renderings, each off the event loop,
so postbacks keep being answered meanwhile."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service import metrics
from service.app import create_app
from tests import helpers
from tests.helpers import medioot, unique

Client = TestClient[web.Request, web.Application]
SCRAPES = 200


async def test_concurrent_scrapes_share_one_rendering_off_the_loop(
    aiohttp_client: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long max_age, so that the second flood below is certain to fall within it.
    settings = helpers.settings(database_url, server={"metrics_max_age": 60})
    client: Client = await aiohttp_client(create_app(settings))
    real = metrics.exposition
    renders: list[int] = []
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_exposition() -> bytes:
        # The first rendering is held until the test has seen a postback answered meanwhile
        # (at most 10 s, so that a rendering on the event loop fails the test, not hangs it).
        renders.append(1)
        started.set()
        if len(renders) == 1:
            release.wait(10)
            finished.set()
        return real()

    monkeypatch.setattr(metrics, "exposition", slow_exposition)

    async def scrape() -> str:
        resp = await client.get("/metrics")
        assert resp.status == 200
        return await resp.text()

    flood = [asyncio.create_task(scrape()) for _ in range(SCRAPES)]
    assert await asyncio.to_thread(started.wait, 10), "no rendering started"
    # A connection of its own: the flood holds every connection of the test client's pool.
    async with aiohttp.ClientSession() as wall:
        params = medioot(unique(), unique("t"), "1")
        async with wall.get(client.make_url("/postbacks/medioot"), params=params) as resp:
            assert (resp.status, await resp.text()) == (200, "OK")
    answered_while_rendering = not finished.is_set()
    release.set()
    pages = await asyncio.gather(*flood)
    assert answered_while_rendering, "the postback waited for the metrics rendering"
    assert all("ledger_postbacks_total" in page for page in pages)
    assert len(renders) == 1, f"{SCRAPES} concurrent scrapes rendered {len(renders)} times"

    # Within max_age, later scrapes reuse that rendering too.
    await asyncio.gather(*(scrape() for _ in range(SCRAPES)))
    assert len(renders) == 1


async def test_with_max_age_zero_each_sequential_scrape_renders(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = metrics.exposition
    renders: list[int] = []

    def counted() -> bytes:
        renders.append(1)
        return real()

    monkeypatch.setattr(metrics, "exposition", counted)
    for _ in range(3):
        assert (await client.get("/metrics")).status == 200
    assert len(renders) == 3
