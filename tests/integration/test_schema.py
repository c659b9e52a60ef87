"""schema.sql against real PostgreSQL: repeatable, append-only, idempotent, exact amounts."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from service.db.connection import SCHEMA_PATH, apply_schema, migrate
from tests.helpers import unique

INSERT_EVENT = """
INSERT INTO events (provider, key, type, user_id, amount, provider_ref)
VALUES ($1, $2, $3, $4, $5::numeric, $6)
RETURNING position
"""


async def insert_event(
    conn: asyncpg.Pool | asyncpg.Connection,
    *,
    provider: str = "medioot",
    key: str | None = None,
    type: str = "credited",
    user: str | None = None,
    amount: str = "1",
) -> int:
    key = key or unique("k")
    position: int = await conn.fetchval(
        INSERT_EVENT, provider, key, type, user or unique(), amount, key
    )
    return position


async def schema_objects(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        """
        SELECT 'table', relname FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'i')
        UNION ALL
        SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL
        SELECT 'constraint', conname FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
        ORDER BY 1, 2
        """
    )
    return [(r[0], r[1]) for r in rows]


# --- applying it again --------------------------------------------------------------------------


async def test_migrate_applies_again_and_again(database_url: str, pool: asyncpg.Pool) -> None:
    before = await schema_objects(pool)
    await migrate(database_url)
    await migrate(database_url)
    assert await schema_objects(pool) == before


async def test_concurrent_migrations_all_succeed(database_url: str, pool: asyncpg.Pool) -> None:
    before = await schema_objects(pool)
    await asyncio.gather(*(migrate(database_url) for _ in range(6)))
    assert await schema_objects(pool) == before


async def test_migrating_keeps_the_data(database_url: str, pool: asyncpg.Pool) -> None:
    user = unique()
    position = await insert_event(pool, user=user, amount="12.50")
    await pool.execute(
        "INSERT INTO wallets (user_id, balance, total_credited, event_count, last_position)"
        " VALUES ($1, 12.50, 12.50, 1, $2)",
        user,
        position,
    )
    await migrate(database_url)
    assert await pool.fetchval("SELECT amount FROM events WHERE position = $1", position) == (
        Decimal("12.50")
    )
    assert await pool.fetchval("SELECT balance FROM wallets WHERE user_id = $1", user) == (
        Decimal("12.50")
    )


async def test_schema_applies_on_an_empty_database(pool: asyncpg.Pool) -> None:
    # In a scratch schema, inside a transaction that is rolled back: the file must build
    # everything from nothing, then again on top of itself.
    sql = SCHEMA_PATH.read_text(encoding="utf-8")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("CREATE SCHEMA scratch; SET LOCAL search_path = scratch")
            await conn.execute(sql)
            await conn.execute(sql)
            tables = await conn.fetch(
                "SELECT relname FROM pg_class WHERE relnamespace = 'scratch'::regnamespace"
                " AND relkind IN ('r', 'p') AND NOT relispartition ORDER BY 1"
            )
            assert [r[0] for r in tables] == [
                "events",
                "holds",
                "idempotency_keys",
                "operator_sessions_ended",
                "postback_log",
                "receipt_offers",
                "schema_upgrades",
                "settlements",
                "signatures",
                "wallets",
            ]
            # The log's partitions: today's, the next three days', the default one.
            partitions = await conn.fetch(
                "SELECT partition::text, is_default FROM scratch.postback_log_partitions()"
            )
            assert [r["is_default"] for r in partitions] == [False] * 4 + [True]
            # Nothing to upgrade in a fresh database: each upgrade is only recorded as done.
            upgrades = await conn.fetch("SELECT name FROM scratch.schema_upgrades")
            assert [r[0] for r in upgrades] == ["receipt_conversions"]
        finally:
            await tx.rollback()


async def test_the_append_only_trigger_survives_reapplying(
    database_url: str, pool: asyncpg.Pool
) -> None:
    position = await insert_event(pool)
    async with pool.acquire() as conn:
        await apply_schema(conn)
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await pool.execute("DELETE FROM events WHERE position = $1", position)


# --- append-only ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET amount = amount + 1 WHERE position = $1",
        "UPDATE events SET user_id = 'someone-else' WHERE position = $1",
        "UPDATE events SET data = '{\"x\": 1}'::jsonb WHERE position = $1",
        "DELETE FROM events WHERE position = $1",
    ],
)
async def test_events_refuse_update_and_delete(pool: asyncpg.Pool, statement: str) -> None:
    position = await insert_event(pool, amount="3.25")
    before = await pool.fetchrow("SELECT * FROM events WHERE position = $1", position)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement, position)
    assert await pool.fetchrow("SELECT * FROM events WHERE position = $1", position) == before


async def test_events_refuse_an_unqualified_delete(pool: asyncpg.Pool) -> None:
    await insert_event(pool)
    count = await pool.fetchval("SELECT count(*) FROM events")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute("DELETE FROM events")
    assert await pool.fetchval("SELECT count(*) FROM events") == count


@pytest.mark.parametrize(
    "statement",
    ["TRUNCATE events", "TRUNCATE TABLE events RESTART IDENTITY", "TRUNCATE events, wallets"],
)
async def test_events_refuse_truncate(pool: asyncpg.Pool, statement: str) -> None:
    await insert_event(pool)
    count = await pool.fetchval("SELECT count(*) FROM events")
    wallets = await pool.fetchval("SELECT count(*) FROM wallets")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement)
    assert await pool.fetchval("SELECT count(*) FROM events") == count
    assert await pool.fetchval("SELECT count(*) FROM wallets") == wallets


async def test_the_projections_can_still_be_updated(pool: asyncpg.Pool) -> None:
    user = unique()
    await pool.execute("INSERT INTO wallets (user_id) VALUES ($1)", user)
    await pool.execute("UPDATE wallets SET balance = 2.5 WHERE user_id = $1", user)
    assert await pool.fetchval("SELECT balance FROM wallets WHERE user_id = $1", user) == (
        Decimal("2.5")
    )
    await pool.execute("DELETE FROM wallets WHERE user_id = $1", user)


# --- idempotency ----------------------------------------------------------------------------------


async def test_same_provider_and_key_twice_violates_the_unique_constraint(
    pool: asyncpg.Pool,
) -> None:
    key = unique("k")
    await insert_event(pool, key=key, amount="1")
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await insert_event(pool, key=key, amount="2", user=unique())
    assert caught.value.constraint_name == "events_provider_key_unique"
    assert await pool.fetchval("SELECT count(*) FROM events WHERE key = $1", key) == 1


async def test_same_key_under_another_provider_is_another_event(pool: asyncpg.Pool) -> None:
    key = unique("k")
    await insert_event(pool, provider="medioot", key=key)
    await insert_event(pool, provider="inbrain", key=key)
    assert await pool.fetchval("SELECT count(*) FROM events WHERE key = $1", key) == 2


async def test_on_conflict_do_nothing_inserts_nothing(pool: asyncpg.Pool) -> None:
    key = unique("k")
    await insert_event(pool, key=key)
    returned = await pool.fetch(
        "INSERT INTO events (provider, key, type, user_id, amount, provider_ref)"
        " VALUES ('medioot', $1, 'credited', 'x', 5, 'r')"
        " ON CONFLICT (provider, key) DO NOTHING RETURNING position",
        key,
    )
    assert returned == []


# --- amounts --------------------------------------------------------------------------------------


async def test_amount_columns_are_numeric(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_name IN"
        " ('amount', 'balance', 'total_credited', 'total_reversed', 'total_debited',"
        " 'captured', 'released')"
        " ORDER BY 1, 2"
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("events", "amount", "numeric"),
        ("holds", "amount", "numeric"),
        ("holds", "captured", "numeric"),
        ("holds", "released", "numeric"),
        ("wallets", "balance", "numeric"),
        ("wallets", "total_credited", "numeric"),
        ("wallets", "total_debited", "numeric"),
        ("wallets", "total_reversed", "numeric"),
    ]
    floats = await pool.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type IN ('real', 'double precision')"
    )
    assert floats == []


@pytest.mark.parametrize(
    "amount",
    [
        "10.50",
        "10.5",
        "0.1",
        "0",
        "0.00",
        "1.000",
        "0.00000000000000000001",
        "999999999999999.99999999999999999999",
        "123456789012345",
    ],
)
async def test_amounts_keep_their_value_and_scale(pool: asyncpg.Pool, amount: str) -> None:
    position = await insert_event(pool, amount=amount)
    stored = await pool.fetchval("SELECT amount FROM events WHERE position = $1", position)
    assert isinstance(stored, Decimal)
    assert str(stored) == amount or format(stored, "f") == amount
    assert stored.as_tuple() == Decimal(amount).as_tuple()
    text = await pool.fetchval("SELECT amount::text FROM events WHERE position = $1", position)
    assert text == amount


async def test_numeric_sums_are_exact(pool: asyncpg.Pool) -> None:
    user = unique()
    for _ in range(3):
        await insert_event(pool, user=user, amount="0.1")
    total = await pool.fetchval("SELECT sum(amount) FROM events WHERE user_id = $1", user)
    assert total == Decimal("0.3")
    assert str(total) == "0.3"


@pytest.mark.parametrize("amount", ["-0.01", "1000000000000000", "1e15", "NaN"])
async def test_amounts_out_of_range_are_refused(pool: asyncpg.Pool, amount: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await insert_event(pool, amount=amount)
    assert caught.value.constraint_name == "events_amount_in_range"


async def test_unknown_event_type_is_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await insert_event(pool, type="gifted")
    assert caught.value.constraint_name == "events_type_known"


async def test_positions_increase(pool: asyncpg.Pool) -> None:
    positions = [await insert_event(pool) for _ in range(5)]
    assert positions == sorted(positions) and len(set(positions)) == 5
    with pytest.raises(asyncpg.GeneratedAlwaysError):
        await pool.execute(
            "INSERT INTO events (position, provider, key, type, user_id, amount, provider_ref)"
            " VALUES (1, 'medioot', $1, 'credited', 'x', 1, 'r')",
            unique("k"),
        )
