"""Group commit: batching, duplicates inside one batch, failures, shedding, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from ops.chaos.dbproxy import DatabaseProxy
from service import keys
from service.app import create_app
from service.db import Unavailable
from service.db.connection import create_pool
from service.domain.events import Outcome
from service.writer import Overloaded, Writer
from tests import helpers
from tests.helpers import medioot, unique
from tests.integration.test_api import metric_samples, sample
from tests.integration.test_store import submission


@pytest.fixture
async def proxied_pool(database_url: str) -> AsyncIterator[tuple[DatabaseProxy, asyncpg.Pool]]:
    proxy = DatabaseProxy(database_url)
    dsn = await proxy.start()
    pool = await create_pool(dsn, min_size=1, max_size=4, wait_limit=1.0)
    try:
        yield proxy, pool
    finally:
        await pool.close()
        await proxy.close()


async def transaction_of(pool: asyncpg.Pool, request_id: str) -> list[int]:
    rows = await pool.fetch(
        "SELECT xmin::text::bigint AS tx FROM postback_log WHERE request_id = $1", request_id
    )
    return [r["tx"] for r in rows]


def tagged(request_id: str, user: str, ref: str, amount: str = "1") -> Any:
    sub = submission(user, ref, amount)
    return type(sub)(
        log=type(sub.log)(request_id, "medioot", "GET", None, {}),
        answer=sub.answer,
        postback=sub.postback,
    )


async def test_two_copies_landing_in_one_batch_apply_once(pool: asyncpg.Pool) -> None:
    writer = Writer(pool, window=0.2, cap=100, inflight=1)
    writer.start()
    try:
        user, ref = unique(), unique("tx")
        blocker = asyncio.create_task(writer.submit(tagged(unique("r"), unique(), unique("tx"))))
        await asyncio.sleep(0)  # the blocker is taken at once: the writer was idle
        copies = [unique("r"), unique("r")]
        receipts = await asyncio.gather(*(writer.submit(tagged(r, user, ref, "3")) for r in copies))
        await blocker
    finally:
        await writer.close()
    assert sorted(r.outcome for r in receipts) == sorted([Outcome.CREDITED, Outcome.DUPLICATE])
    first, second = [await transaction_of(pool, r) for r in copies]
    assert first == second, "the two copies were not written in one transaction"
    row = await pool.fetchrow("SELECT balance, event_count FROM wallets WHERE user_id = $1", user)
    assert (row["balance"], row["event_count"]) == (Decimal(3), 1)


async def test_an_idle_service_does_not_wait_for_the_window(pool: asyncpg.Pool) -> None:
    writer = Writer(pool, window=2.0, cap=100, inflight=2)
    writer.start()
    try:
        started = time.monotonic()
        receipt = await writer.submit(submission(unique(), unique("tx"), "1"))
        elapsed = time.monotonic() - started
    finally:
        await writer.close()
    assert receipt.outcome is Outcome.CREDITED
    assert elapsed < 1.0, f"an idle postback waited {elapsed:.2f}s for a 2s window"


async def test_busy_postbacks_share_transactions(pool: asyncpg.Pool) -> None:
    writer = Writer(pool, window=0.01, cap=50, inflight=2)
    writer.start()
    ids = [unique("r") for _ in range(200)]
    try:
        await asyncio.gather(*(writer.submit(tagged(r, unique(), unique("tx"))) for r in ids))
    finally:
        await writer.close()
    transactions = {tx for r in ids for tx in await transaction_of(pool, r)}
    assert len(transactions) < len(ids) / 4, f"{len(transactions)} commits for {len(ids)}"


async def test_a_database_failure_fails_the_whole_batch_and_records_nothing(
    proxied_pool: tuple[DatabaseProxy, asyncpg.Pool], pool: asyncpg.Pool
) -> None:
    proxy, proxied = proxied_pool
    writer = Writer(proxied, window=0.01, cap=100, inflight=2)
    writer.start()
    refs = [unique("tx") for _ in range(10)]
    try:
        proxy.cut()
        results = await asyncio.gather(
            *(writer.submit(submission(unique(), ref, "1")) for ref in refs),
            return_exceptions=True,
        )
    finally:
        proxy.restore()
        await writer.close()
    assert all(isinstance(r, Unavailable) for r in results), results
    count = await pool.fetchval("SELECT count(*) FROM events WHERE provider_ref = ANY($1)", refs)
    assert count == 0


async def test_one_bad_postback_does_not_fail_its_batch(pool: asyncpg.Pool) -> None:
    writer = Writer(pool, window=0.2, cap=100, inflight=1)
    writer.start()
    try:
        blocker = asyncio.create_task(writer.submit(submission(unique(), unique("tx"), "1")))
        await asyncio.sleep(0)
        # Past the schema's CHECK (amount < 1e15): a bug upstream, not a database outage.
        poison = submission(unique(), unique("tx"), "1e16")
        good = [submission(unique(), unique("tx"), "2") for _ in range(3)]
        results = await asyncio.gather(
            *(writer.submit(s) for s in [*good[:2], poison, good[2]]), return_exceptions=True
        )
        await blocker
    finally:
        await writer.close()
    assert [getattr(r, "outcome", None) for r in results] == [
        Outcome.CREDITED,
        Outcome.CREDITED,
        None,
        Outcome.CREDITED,
    ]
    assert isinstance(results[2], asyncpg.CheckViolationError)


async def test_overload_is_refused_at_once(
    proxied_pool: tuple[DatabaseProxy, asyncpg.Pool],
) -> None:
    proxy, proxied = proxied_pool
    writer = Writer(proxied, window=0.001, cap=2, inflight=1, max_queue=3)
    writer.start()
    proxy.stall()
    try:
        tasks = [asyncio.create_task(writer.submit(submission(unique(), unique("tx"), "1")))]
        await asyncio.sleep(0.05)  # the first batch is now stuck in the stalled database
        tasks += [
            asyncio.create_task(writer.submit(submission(unique(), unique("tx"), "1")))
            for _ in range(3)
        ]
        await asyncio.sleep(0)  # let those three join the queue
        started = time.monotonic()
        with pytest.raises(Overloaded):
            await writer.submit(submission(unique(), unique("tx"), "1"))
        assert time.monotonic() - started < 0.1
    finally:
        proxy.cut()
        proxy.restore()
        await asyncio.gather(*tasks, return_exceptions=True)
        await writer.close()


async def test_shutdown_answers_everything_queued(pool: asyncpg.Pool) -> None:
    writer = Writer(pool, window=0.05, cap=10, inflight=1)
    writer.start()
    tasks = [
        asyncio.create_task(writer.submit(submission(unique(), unique("tx"), "1")))
        for _ in range(50)
    ]
    await asyncio.sleep(0)
    await writer.close()
    results = await asyncio.gather(*tasks)
    assert {r.outcome for r in results} == {Outcome.CREDITED}
    with pytest.raises(Unavailable):
        await writer.submit(submission(unique(), unique("tx"), "1"))


async def test_an_overloaded_service_answers_503_with_retry_after(
    aiohttp_client: Any, database_url: str
) -> None:
    settings = helpers.settings(
        database_url, writer={"max_queue": 1, "max_inflight": 1, "batch_max": 1}
    )
    client = await aiohttp_client(create_app(settings))
    app_pool = client.app[keys.POOL]
    # Hold the only write slot with a long transaction on the app's own pool.
    async with app_pool.acquire() as conn, conn.transaction():
        user = unique()
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"user:{user}")
        first = asyncio.create_task(
            client.get("/postbacks/medioot", params=medioot(user, unique("tx"), "1"))
        )
        await asyncio.sleep(0.2)  # the first postback now waits on the user's lock
        queued = asyncio.create_task(
            client.get("/postbacks/medioot", params=medioot(user, unique("tx"), "1"))
        )
        await asyncio.sleep(0.1)
        before = await metric_samples(client)
        shed_user = unique()
        shed = await client.get("/postbacks/medioot", params=medioot(shed_user, unique("tx"), "1"))
        assert shed.status == 503
        assert shed.headers["Retry-After"] == "1"
        assert await shed.text() == "overloaded, retry later"
        after = await metric_samples(client)
    assert (await first).status == 200
    assert (await queued).status == 200

    def delta(outcome: str) -> float:
        name, labels = "ledger_postbacks_total", {"provider": "medioot", "outcome": outcome}
        return sample(after, name, **labels) - sample(before, name, **labels)

    # Shed, not down: counted apart from "unavailable", which pages as a database outage.
    assert delta("shed") == 1
    assert delta("unavailable") == 0
    # Nothing recorded, not even a postback log row: the queue that was full writes those.
    logged = await app_pool.fetchval(
        "SELECT count(*) FROM postback_log WHERE user_id = $1", shed_user
    )
    assert logged == 0
