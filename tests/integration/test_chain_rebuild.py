"""Tamper evidence (hash chains per wallet) and `rebuild`."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ops.chaos.dbproxy import DatabaseProxy
from service.app import create_app
from service.rebuild import rebuild
from service.replay import replay
from tests import helpers
from tests.helpers import AUTH, medioot, unique

Client = TestClient  # type: ignore[type-arg]
ROOT = Path(__file__).resolve().parents[2]
KEY = helpers.chain_key()


async def credit(client: Client, user: str, amount: str, status: str = "1") -> str:
    tx = unique("tx")
    resp = await client.get("/postbacks/medioot", params=medioot(user, tx, amount, status))
    assert await resp.text() == "OK"
    return tx


async def test_each_event_chains_to_the_previous_one_of_its_user(
    client: Client, pool: asyncpg.Pool
) -> None:
    user = unique()
    for amount in ("1", "2", "3"):
        await credit(client, user, amount)
    rows = await pool.fetch(
        "SELECT prev_hash, hash FROM events WHERE user_id = $1 ORDER BY position", user
    )
    assert rows[0]["prev_hash"] is None
    assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
    assert len({bytes(r["hash"]) for r in rows}) == 3
    page = await (await client.get(f"/v1/wallets/{user}/events", headers=AUTH)).json()
    assert [e["hash"] for e in page["events"]] == [bytes(r["hash"]).hex() for r in rows]


async def superuser(pool: asyncpg.Pool) -> None:
    if not await pool.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("editing the append-only log needs a superuser (TEST_DATABASE_URL is not one)")


async def test_an_edited_amount_makes_verify_fail_and_name_the_event(
    client: Client, pool: asyncpg.Pool
) -> None:
    await superuser(pool)
    user = unique()
    await credit(client, user, "5")
    tx = await credit(client, user, "7")
    await credit(client, user, "9")
    position = await pool.fetchval("SELECT position FROM events WHERE provider_ref = $1", tx)
    # A superuser can switch the append-only trigger off; the chain still tells.
    await helpers.set_event_amount(pool, position, "700")
    try:
        async with pool.acquire() as conn:
            report = await helpers.verify_log(conn)
        assert not report.ok
        assert report.differences[0] == (
            f"event {position} (user {user!r}): its hash does not match its contents"
        )
    finally:
        await helpers.set_event_amount(pool, position, "7")
    async with pool.acquire() as conn:
        assert (await helpers.verify_log(conn)).ok


class _Rollback(Exception):
    pass


async def test_a_removed_event_breaks_the_chain_of_the_next(
    client: Client, pool: asyncpg.Pool
) -> None:
    await superuser(pool)
    user = unique()
    await credit(client, user, "1")
    middle = await credit(client, user, "2")
    last = await credit(client, user, "3")
    with pytest.raises(_Rollback):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
            await conn.execute("DELETE FROM events WHERE provider_ref = $1", middle)
            position = await conn.fetchval(
                "SELECT position FROM events WHERE provider_ref = $1", last
            )
            result = await replay(conn, "test", KEY)
            assert result.chain_breaks == [
                f"event {position} (user {user!r}): does not chain to the previous event"
                " of its user"
            ]
            raise _Rollback  # undo the deletion
    async with pool.acquire() as conn:
        assert (await helpers.verify_log(conn)).ok


@contextlib.asynccontextmanager
async def adgate_client(database_url: str) -> AsyncIterator[Client]:
    """A service with Medioot and AdGate's receipt offers (URL token rebuild-token-0000)."""
    settings = helpers.settings(
        database_url,
        providers=[
            {"name": "medioot", "protocol": "medioot", "secret": helpers.MEDIOOT_SECRET},
            {"name": "adgate", "protocol": "adgate_receipts", "url_token": "rebuild-token-0000"},
        ],
    )
    adgate: Client = TestClient(TestServer(create_app(settings)))
    await adgate.start_server()
    try:
        yield adgate
    finally:
        await adgate.close()


async def snapshot(pool: asyncpg.Pool) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    wallets = await pool.fetch(
        "SELECT user_id, balance, total_credited, total_reversed, event_count, last_position"
        " FROM wallets ORDER BY user_id"
    )
    offers = await pool.fetch(
        "SELECT provider, upload_offer_id, upload_id, offer_id, user_id, status,"
        " points_credited, approvals, event_count, last_position FROM receipt_offers"
        " ORDER BY provider, upload_offer_id"
    )
    return wallets, offers


async def test_rebuild_restores_identical_projections(
    client: Client, pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    user = unique()
    await credit(client, user, "10.50")
    await credit(client, user, "0.25", status="2")
    async with adgate_client(database_url) as adgate:
        offer = unique("uo")
        for status, points in (("MANUAL_REVIEW", "5"), ("APPROVED", "5"), ("REJECTED", "5")):
            resp = await adgate.get(
                "/postbacks/adgate/rebuild-token-0000",
                params={
                    "s1": user,
                    "shm_upload_offer_id": offer,
                    "shm_status": status,
                    "shm_event_id": unique("ev"),
                    "points": points,
                },
            )
            assert resp.status == 200

    before = await snapshot(pool)
    await pool.execute("DELETE FROM wallets; DELETE FROM receipt_offers")
    async with pool.acquire() as conn:
        events, wallets, offers = await rebuild(conn, KEY)
    assert (wallets, offers) == (len(before[0]), len(before[1]))
    assert events >= 5
    assert await snapshot(pool) == before
    async with pool.acquire() as conn:
        assert (await helpers.verify_log(conn)).ok

    config = tmp_path / "ledger.toml"
    config.write_text(helpers.database_toml(database_url))
    await pool.execute("UPDATE wallets SET balance = balance + 1")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "rebuild", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("verify: ok:")
    assert await snapshot(pool) == before


async def test_rebuild_beside_concurrent_receipt_writers_succeeds_and_verifies(
    aiohttp_client: Any, database_url: str, pool: asyncpg.Pool
) -> None:
    """The write path updates receipt_offers, then wallets; rebuild must lock them in that
    order, or a writer holding one and rebuild holding the other deadlock."""
    token = "rebuild-concurrent-token-0000"
    # Slow round trips for the writers (not for rebuild): each spends longer between its
    # receipt_offers and wallets statements, where a wrong lock order deadlocks.
    proxy = DatabaseProxy(database_url, delay=0.005)
    settings = helpers.settings(
        await proxy.start(),
        providers=[{"name": "adgate", "protocol": "adgate_receipts", "url_token": token}],
    )
    client: Client = await aiohttp_client(create_app(settings))
    stop, under_way = asyncio.Event(), asyncio.Event()
    answers: list[int] = []

    async def wall(n: int) -> None:
        user = unique(f"rw{n}")
        while not stop.is_set():
            offer = unique("uo")
            for status in ("MANUAL_REVIEW", "APPROVED"):
                query = {
                    "s1": user,
                    "shm_upload_offer_id": offer,
                    "shm_status": status,
                    "shm_event_id": unique("ev"),
                    "points": "1.5",
                }
                resp = await client.get(f"/postbacks/adgate/{token}", params=query)
                answers.append(resp.status)
                if len(answers) >= 20:
                    under_way.set()

    walls = [asyncio.create_task(wall(n)) for n in range(8)]
    try:
        await under_way.wait()
        for _ in range(8):
            async with pool.acquire() as conn:
                await rebuild(conn, KEY)  # a deadlock would raise here
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*walls)
        await client.close()
        await proxy.close()
    assert set(answers) == {200}
    async with pool.acquire() as conn:
        report = await helpers.verify_log(conn)
    assert report.ok, report.differences


async def test_rebuild_under_spending_neither_deadlocks_nor_loses_anything(
    database_url: str, pool: asyncpg.Pool, aiohttp_client: Any
) -> None:
    """Spending touches wallets, then holds: rebuild locks the projections in that order too,
    so debits, holds and captures running beside it never deadlock with it, and the rebuilt
    wallets and holds agree with the log."""
    proxy = DatabaseProxy(database_url, delay=0.005)
    client: Client = await aiohttp_client(create_app(helpers.settings(await proxy.start())))
    stop, under_way = asyncio.Event(), asyncio.Event()
    answers: list[int] = []

    async def spend(path: str, body: str) -> dict[str, Any]:
        headers = {**helpers.SPEND_AUTH, "Idempotency-Key": unique("k")}
        resp = await client.post(path, data=body.encode(), headers=headers)
        answers.append(resp.status)
        if len(answers) >= 20:
            under_way.set()
        answer: dict[str, Any] = await resp.json()
        return answer

    async def shop(n: int) -> None:
        user = unique(f"rs{n}")
        while not stop.is_set():
            await spend(f"/v1/wallets/{user}/credits", '{"amount": "3"}')
            hold = await spend(f"/v1/wallets/{user}/holds", '{"amount": "2"}')
            await spend(f"/v1/holds/{hold['hold']['hold_id']}/capture", '{"amount": "1"}')
            await spend(f"/v1/wallets/{user}/debits", '{"amount": "1"}')

    shops = [asyncio.create_task(shop(n)) for n in range(6)]
    try:
        await under_way.wait()
        for _ in range(6):
            async with pool.acquire() as conn:
                await rebuild(conn, KEY)  # a deadlock would raise here
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*shops)
        await client.close()
        await proxy.close()
    assert set(answers) <= {200, 201}
    async with pool.acquire() as conn:
        report = await helpers.verify_log(conn)
        held = await conn.fetchval("SELECT count(*) FROM holds WHERE status = 'captured'")
    assert report.ok, report.differences
    assert held > 0


async def updated_at(pool: asyncpg.Pool) -> dict[str, list[Any]]:
    """Every projection row's key, last position and updated_at."""
    return {
        table: [
            tuple(r)
            for r in await pool.fetch(
                f"SELECT {key}, last_position, updated_at FROM {table} ORDER BY {key}"
            )
        ]
        for table, key in (
            ("wallets", "user_id"),
            ("receipt_offers", "provider, upload_offer_id"),
            ("settlements", "provider, link"),
            ("holds", "hold_id"),
        )
    }


async def test_rebuild_keeps_the_updated_at_the_write_path_gave_each_row(
    client: Client, pool: asyncpg.Pool, database_url: str
) -> None:
    """The write path sets updated_at to now(), its transaction's time, which is also the
    recorded_at of the events that transaction appends: rebuild gives back the same value."""
    user = unique()
    tx = await credit(client, user, "10")
    await asyncio.sleep(0.01)  # distinct transaction times
    await credit(client, user, "3")
    await asyncio.sleep(0.01)
    resp = await client.get("/postbacks/medioot", params=medioot(user, tx, "10", "2"))
    assert await resp.text() == "OK"
    hold = await client.post(
        f"/v1/wallets/{user}/holds",
        json={"amount": "1"},
        headers={**helpers.SPEND_AUTH, "Idempotency-Key": unique("idem")},
    )
    assert hold.status == 201, await hold.text()
    async with adgate_client(database_url) as adgate:
        offer = unique("uo")
        for status in ("MANUAL_REVIEW", "APPROVED"):
            await asyncio.sleep(0.01)
            resp = await adgate.get(
                "/postbacks/adgate/rebuild-token-0000",
                params={
                    "s1": user,
                    "shm_upload_offer_id": offer,
                    "shm_status": status,
                    "shm_event_id": unique("ev"),
                    "points": "5",
                },
            )
            assert resp.status == 200

    before = await updated_at(pool)
    assert all(before.values()), before  # every projection has rows to compare
    last = await pool.fetchrow(
        "SELECT w.updated_at, e.recorded_at FROM wallets AS w"
        " JOIN events AS e ON e.position = w.last_position WHERE w.user_id = $1",
        user,
    )
    assert last["updated_at"] == last["recorded_at"]
    await asyncio.sleep(0.01)
    async with pool.acquire() as conn:
        await rebuild(conn, KEY)
    assert await updated_at(pool) == before
