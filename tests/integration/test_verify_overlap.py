"""`verify` with a second connection (the projections checked while the chains are): the same
report as on one connection, from the same snapshot, the second connection closed after."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from service import verify as verifying
from service.db import connection
from service.rebuild import rebuild
from service.verify import Report
from tests import helpers
from tests.integration.test_verify_fast import EXAMPLES, KEY, TAMPERING, USERS, append, log


class Opener:
    """A `connect` for `verify` that remembers what it opened (and can do something first)."""

    def __init__(self, url: str, first: Any = None) -> None:
        self.url, self.first = url, first
        self.opened: list[asyncpg.Connection] = []

    async def __call__(self) -> asyncpg.Connection:
        if self.first is not None:
            await self.first()
        conn = await connection.connect(self.url)
        self.opened.append(conn)
        return conn


async def both_ways(pool: asyncpg.Pool, url: str) -> Report:
    """The report on one connection and on two, which must be the same; the second connection
    used and closed."""
    opener = Opener(url)
    async with pool.acquire() as conn:
        alone = await helpers.verify_log(conn)
        shared = await verifying.verify(conn, KEY, helpers.RUNTIME_ROLE, connect=opener)
    assert len(opener.opened) == 1 and opener.opened[0].is_closed()
    assert shared.differences == alone.differences
    assert shared.notes == alone.notes
    assert shared.summary() == alone.summary()
    return shared


@EXAMPLES
@given(specs=log, tamper=st.sampled_from(TAMPERING), user=st.sampled_from(USERS))
async def test_one_connection_or_two_give_the_same_report(
    pool: asyncpg.Pool, database_url: str, specs: list[dict[str, Any]], tamper: str, user: str
) -> None:
    await append(pool, specs)
    assert (await both_ways(pool, database_url)).ok
    await pool.execute(tamper, user)
    try:
        await both_ways(pool, database_url)
    finally:
        async with pool.acquire() as conn:
            await rebuild(conn, KEY)


async def test_an_edited_event_is_named_alike_on_two_connections(
    pool: asyncpg.Pool, database_url: str
) -> None:
    positions = await append(pool, [{"type": "debited", "user": "a", "amount": "1", "hold": "h1",
                                     "end": None, "test": False}])  # fmt: skip
    (position,) = positions
    before = await pool.fetchval("SELECT amount::text FROM events WHERE position = $1", position)
    await helpers.set_event_amount(pool, position, str(Decimal(before) + 1))
    try:
        report = await both_ways(pool, database_url)
        assert any(f"event {position} " in line for line in report.differences)
    finally:
        await helpers.set_event_amount(pool, position, before)
    assert (await both_ways(pool, database_url)).ok


async def test_the_second_connection_sees_the_first_ones_snapshot(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await append(pool, [{"type": "debited", "user": "a", "amount": "2", "hold": "h1",
                         "end": None, "test": False}])  # fmt: skip
    events = await pool.fetchval("SELECT count(*) FROM events")

    async def meanwhile() -> None:
        # After the first connection exported its snapshot, before the second one opens: an
        # event and a changed wallet, committed. Neither phase may see them.
        await pool.execute(
            "INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test, data)"
            " VALUES ('spender', $1, 'debited', 'a', 1, '', false, '{}')",
            helpers.unique("late"),
        )
        await pool.execute("UPDATE wallets SET total_debited = total_debited + 5")

    opener = Opener(database_url, first=meanwhile)
    try:
        async with pool.acquire() as conn:
            report = await verifying.verify(conn, KEY, helpers.RUNTIME_ROLE, connect=opener)
        assert len(opener.opened) == 1 and opener.opened[0].is_closed()
        assert report.ok, report.differences
        assert report.events == events
        # Seen now, by a new snapshot: the wallets no longer agree with the log.
        async with pool.acquire() as conn:
            assert not (await helpers.verify_log(conn)).ok
    finally:
        async with pool.acquire() as conn:
            await rebuild(conn, KEY)


async def test_without_a_second_connection_verify_runs_on_one(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await append(pool, [])

    async def refused() -> asyncpg.Connection:
        raise OSError("connection refused")

    async with pool.acquire() as conn:
        alone = await helpers.verify_log(conn)
        fallback = await verifying.verify(conn, KEY, helpers.RUNTIME_ROLE, connect=refused)
    assert fallback.ok and fallback.summary() == alone.summary()


async def test_a_refused_export_falls_back_to_one_connection(
    pool: asyncpg.Pool, database_url: str, monkeypatch: Any
) -> None:
    await append(pool, [])
    export = verifying._export_snapshot

    async def refused(conn: asyncpg.Connection) -> str | None:
        try:  # as a replica refuses it: the transaction is aborted
            await conn.execute("SELECT pg_export_snapshot() FROM no_such_table")
        except asyncpg.PostgresError as exc:
            raise verifying._NoSnapshot() from exc
        return await export(conn)

    monkeypatch.setattr(verifying, "_export_snapshot", refused)
    opener = Opener(database_url)
    async with pool.acquire() as conn:
        alone = await helpers.verify_log(conn)
        fallback = await verifying.verify(conn, KEY, helpers.RUNTIME_ROLE, connect=opener)
    assert not opener.opened
    assert fallback.ok and fallback.summary() == alone.summary()
