"""Overload and slow clients, in miniature (the long run is
ops/chaos/overload.py).

(a) Many walls at once, at the HTTP level, against a database that commits slowly (a proxy
delays every chunk) or not at all (a stalled proxy): every answer is 200 or 503 with
Retry-After, never a 500; what cannot wait is refused at once; the writer's queue never holds
more than `writer.max_queue`; latency stays bounded; and once the walls retry as Retry-After
says, every postback is in the ledger exactly once. (tests/integration/test_writer.py covers the
writer alone and a single shed request.)

(b) Slowloris against the real server process (`python -m service serve`, which applies
`server.keepalive_timeout`): 50 connections that never finish a head, trickle a body, or send
nothing; normal postbacks are still answered quickly, and the server closes every slow
connection after the timeouts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ops.chaos import common
from ops.chaos.dbproxy import DatabaseProxy
from ops.chaos.fuzzlib import Conn
from ops.chaos.overload import (
    LINGERING,
    TARGET,
    Slow,
    percentile,
    postback_wire,
    slow_client,
    walls,
)
from service import keys
from service.app import create_app
from tests import helpers
from tests.helpers import unique

MAX_QUEUE = 20


class Walls:
    """`n` postbacks sent at once, one connection each, retried after Retry-After."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.run = unique("ol")
        self.postbacks = {
            f"{self.run}-{i}": (f"{self.run}-u{i % 7}", f"{i + 1}.25") for i in range(n)
        }
        self.answers: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {"200": [], "503": []}
        self.acknowledged: set[str] = set()

    async def round(self, transids: list[str]) -> list[str]:
        """Send these postbacks at once; the ones answered 503."""
        host = f"127.0.0.1:{self.port}".encode()

        conns = [Conn("127.0.0.1", self.port) for _ in transids]
        # Connected first: more connects at once than the listen backlog (128) would measure
        # the kernel's SYN retries, not the service.
        await asyncio.gather(*(c.connect() for c in conns))

        async def one(conn: Conn, transid: str) -> tuple[str, Any, float]:
            try:
                user, reward = self.postbacks[transid]
                sent = time.monotonic()
                reply = await conn.exchange(postback_wire(host, user, transid, reward), limit=30)
                return transid, reply, time.monotonic() - sent
            finally:
                conn.close()

        shed = []
        done = await asyncio.gather(*(one(c, t) for c, t in zip(conns, transids, strict=True)))
        for transid, reply, took in done:
            status = str(reply.status or reply.error)
            self.answers[status] += 1
            self.latency.setdefault(status, []).append(took)
            assert reply.status in (200, 503), f"{status} {reply.body[:200]!r}"
            if reply.status == 503:
                assert reply.headers.get("retry-after") == "1", reply.headers
                shed.append(transid)
            else:
                self.acknowledged.add(transid)
        return shed

    async def until_all_acknowledged(self, rounds: int = 15) -> int:
        """Every postback, retried after Retry-After until answered 200; the rounds it took."""
        waiting = list(self.postbacks)
        for n in range(1, rounds + 1):
            waiting = await self.round(waiting)
            if not waiting:
                return n
            await asyncio.sleep(1.0)  # Retry-After: 1
        raise AssertionError(f"{len(waiting)} postbacks still refused after {rounds} rounds")

    async def audit(self, pool: asyncpg.Pool) -> None:
        rows = await pool.fetch(
            "SELECT provider_ref, user_id, amount FROM events WHERE provider_ref LIKE $1",
            f"{self.run}-%",
        )
        assert sorted(r["provider_ref"] for r in rows) == sorted(self.postbacks)
        for r in rows:
            user, reward = self.postbacks[r["provider_ref"]]
            assert (r["user_id"], r["amount"]) == (user, Decimal(reward))
        for user in {u for u, _ in self.postbacks.values()}:
            want = sum(Decimal(r) for u, r in self.postbacks.values() if u == user)
            assert (
                await pool.fetchval("SELECT balance FROM wallets WHERE user_id = $1", user) == want
            )


def overload_settings(dsn: str, timeout: float) -> Any:
    return helpers.settings(
        dsn,
        database={"pool_max_size": 3, "timeout": timeout},
        writer={"max_queue": MAX_QUEUE, "batch_max": 5, "max_inflight": 1},
        providers=TARGET.providers(),
    )


async def sample_queue(app: Any, seen: list[int]) -> None:
    while True:
        seen.append(app[keys.WRITER].waiting)
        await asyncio.sleep(0.001)


@pytest.fixture
async def slow_database(database_url: str) -> AsyncIterator[DatabaseProxy]:
    proxy = DatabaseProxy(database_url, delay=0.003)
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_a_burst_beyond_what_the_database_commits_is_shed_and_converges(
    aiohttp_client: Any, slow_database: DatabaseProxy, pool: asyncpg.Pool
) -> None:
    dsn = await slow_database.start()
    client = await aiohttp_client(create_app(overload_settings(dsn, timeout=5.0)))
    try:
        await burst_is_shed_and_converges(client, pool)
    finally:
        await client.close()  # before the proxy goes


async def burst_is_shed_and_converges(client: Any, pool: asyncpg.Pool) -> None:
    queue: list[int] = []
    sampler = asyncio.create_task(sample_queue(client.app, queue))
    burst = Walls(client.port, 120)
    try:
        started = time.monotonic()
        shed = await burst.round(list(burst.postbacks))
        first_round = time.monotonic() - started
    finally:
        sampler.cancel()
    assert shed, "120 postbacks at once did not outrun the database: nothing shown"
    assert burst.answers["200"] > 0
    assert max(queue) <= MAX_QUEUE, f"the writer queue reached {max(queue)}"
    # Refusals come at once; accepted postbacks wait for at most a short queue.
    assert percentile(burst.latency["503"], 0.99) < 1.0, burst.latency["503"]
    assert max(burst.latency["200"]) < 5.0, max(burst.latency["200"])
    assert first_round < 6.0
    # The walls retry as told; every postback ends up in the ledger exactly once.
    await burst.until_all_acknowledged()
    await burst.audit(pool)


async def test_a_stalled_database_is_503_within_the_timeout_and_recovers(
    aiohttp_client: Any, database_url: str, pool: asyncpg.Pool
) -> None:
    proxy = DatabaseProxy(database_url)
    dsn = await proxy.start()
    try:
        client = await aiohttp_client(create_app(overload_settings(dsn, timeout=1.0)))
        warm = Walls(client.port, 1)
        assert await warm.round(list(warm.postbacks)) == []
        proxy.stall()
        stalled = Walls(client.port, 60)
        queue: list[int] = []
        sampler = asyncio.create_task(sample_queue(client.app, queue))
        try:
            shed = await stalled.round(list(stalled.postbacks))
        finally:
            sampler.cancel()
        assert sorted(shed) == sorted(stalled.postbacks), stalled.answers
        assert max(queue) <= MAX_QUEUE
        latencies = sorted(stalled.latency["503"])
        # Beyond the queue: refused at once. In the queue: a batch of 5 per timeout of 1 s.
        assert latencies[len(latencies) // 2] < 0.5, latencies
        assert latencies[-1] < (MAX_QUEUE / 5 + 2) * 1.0 + 1.5, latencies[-1]
        proxy.restore()
        await stalled.until_all_acknowledged()
        await stalled.audit(pool)
        await client.close()
    finally:
        await proxy.close()


# --- (b) slow clients against the real server ----------------------------------------------------

TIMEOUT = 1.0  # server.keepalive_timeout and server.read_timeout


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[common.Service]:
    service = common.Service(database_url, tmp_path)
    timeouts = {"keepalive_timeout": TIMEOUT, "read_timeout": TIMEOUT / 2}
    service.config.write_text(
        TARGET.toml(
            database_url,
            api_key=helpers.READ_KEY,
            server=timeouts,
            database=common.database_urls(database_url),
            integrity={"chain_key": helpers.CHAIN_KEY},
        )
    )
    await service.start()
    try:
        yield service
    finally:
        await asyncio.to_thread(service.stop)


async def test_slow_clients_cannot_hold_the_server(server: common.Service) -> None:
    kinds = ["slow-head"] * 20 + ["slow-body"] * 15 + ["idle"] * 10 + ["idle-after-request"] * 5
    slows = [Slow(kind) for kind in kinds]
    limit = TIMEOUT + LINGERING + 5
    attack = asyncio.gather(*(slow_client("127.0.0.1", server.port, s, 0.2, limit) for s in slows))
    await asyncio.sleep(0.3)
    latency, answers = await walls("127.0.0.1", server.port, 3.0, unique("sl"), n=4)
    await attack

    assert set(answers) == {"200"} and answers["200"] > 20, answers
    assert percentile(latency, 0.99) < 0.5, sorted(latency)[-5:]
    for s in slows:
        assert s.opened and s.closed is not None, (
            f"{s.kind}: the server never closed it ({s.error})"
        )
        lasted = s.closed - s.opened
        if s.kind == "slow-body":
            # Refused with 408 once read_timeout is over, closed when aiohttp stops lingering.
            assert s.answer.startswith("HTTP/1.1 408"), s.answer
            assert s.answered is not None and s.answered - s.opened < TIMEOUT / 2 + 1.0
            assert lasted < TIMEOUT / 2 + LINGERING + 2.0, lasted
        else:
            assert lasted < TIMEOUT + 1.0, f"{s.kind} lasted {lasted:.2f} s"
