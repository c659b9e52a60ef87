"""The postback log's retention: one partition per UTC day, made ahead by the upkeep and dropped
whole once older than `postback_log.retention_days`; a default partition for any row no day's
partition covers. The upkeep works as the runtime role, through the owner's functions."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from service import upkeep
from service.db import partitions
from tests.helpers import runtime_url, unique

INSERT = """
INSERT INTO postback_log (received_at, request_id, provider, outcome, http_status, method)
VALUES ($1, $2, 'medioot', 'credited', 200, 'GET') RETURNING id, tableoid::regclass::text
"""


def utc_day(at: dt.datetime) -> dt.date:
    return at.astimezone(dt.UTC).date()


def name(day: dt.date) -> str:
    return f"postback_log_{day:%Y%m%d}"


async def now(pool: asyncpg.Pool) -> dt.datetime:
    at: dt.datetime = await pool.fetchval("SELECT now()")
    return at


async def partition_names(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'postback_log'::regclass"
    )
    return sorted(r["relname"] for r in rows)


async def exists(pool: asyncpg.Pool, table: str) -> bool:
    return bool(await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


async def test_migrate_made_today_the_next_days_and_the_default_partition(
    pool: asyncpg.Pool,
) -> None:
    today = utc_day(await now(pool))
    names = await partition_names(pool)
    for ahead in range(partitions.DAYS_AHEAD + 1):
        assert name(today + dt.timedelta(days=ahead)) in names
    assert "postback_log_default" in names
    assert await pool.fetchval(
        "SELECT relkind::text FROM pg_class WHERE relname = 'postback_log'"
    ) == ("p")


async def test_expiry_drops_whole_days_past_retention(
    pool: asyncpg.Pool, runtime_pool: asyncpg.Pool
) -> None:
    at = await now(pool)
    old, recent = at - dt.timedelta(days=100), at - dt.timedelta(days=10)
    await pool.fetch(
        "SELECT * FROM postback_log_prepare($1::date, $1::date)"
        " UNION ALL SELECT * FROM postback_log_prepare($2::date, $2::date)",
        utc_day(old),
        utc_day(recent),
    )
    tag = unique("retention")
    (old_id, old_table) = await pool.fetchrow(INSERT, old, f"{tag}-old")
    (recent_id, recent_table) = await pool.fetchrow(INSERT, recent, f"{tag}-recent")
    assert (old_table, recent_table) == (name(utc_day(old)), name(utc_day(recent)))

    # The upkeep's pass, as the runtime role.
    assert await upkeep.tend_postback_log(runtime_pool, 90)
    assert not await exists(pool, old_table)
    assert old_table not in await partition_names(pool)
    ids = {
        r["id"]
        for r in await pool.fetch(
            "SELECT id FROM postback_log WHERE id = ANY($1)", [old_id, recent_id]
        )
    }
    assert ids == {recent_id}

    assert await upkeep.tend_postback_log(runtime_pool, 5)
    assert not await exists(pool, recent_table)
    assert not await pool.fetchval("SELECT count(*) FROM postback_log WHERE id = $1", recent_id)
    # Today's partition and the next days' stay.
    assert name(utc_day(at)) in await partition_names(pool)


async def test_a_row_no_day_covers_goes_to_the_default_partition(
    pool: asyncpg.Pool, runtime_pool: asyncpg.Pool
) -> None:
    tag = unique("default")
    past = dt.datetime(1990, 1, 1, 12, tzinfo=dt.UTC)
    future = dt.datetime(2100, 1, 1, 12, tzinfo=dt.UTC)
    (past_id, past_table) = await runtime_pool.fetchrow(INSERT, past, f"{tag}-past")
    (future_id, future_table) = await runtime_pool.fetchrow(INSERT, future, f"{tag}-future")
    assert past_table == future_table == "postback_log_default"

    # Its day's partition made: the row moves into it.
    made = await pool.fetch("SELECT * FROM postback_log_prepare('2100-01-01', '2100-01-01')")
    assert [(r["partition"], r["moved"]) for r in made] == [("postback_log_21000101", 1)]
    assert await pool.fetchval(
        "SELECT tableoid::regclass::text FROM postback_log WHERE id = $1", future_id
    ) == ("postback_log_21000101")
    # Past retention: deleted from the default partition.
    dropped = await partitions.expire(runtime_pool, 90)
    assert ("postback_log_default", 1) in dropped
    assert not await pool.fetchval("SELECT count(*) FROM postback_log WHERE id = $1", past_id)
    assert await pool.fetchval("SELECT count(*) FROM postback_log WHERE id = $1", future_id) == 1


async def test_concurrent_passes_all_succeed(database_url: str) -> None:
    conns = [await asyncpg.connect(runtime_url(database_url)) for _ in range(3)]
    try:
        first = dt.date(2101, 1, 1)
        made = await asyncio.gather(
            *(
                c.fetch(
                    "SELECT * FROM postback_log_prepare($1::date, $1::date + 20)"
                    " UNION ALL SELECT * FROM postback_log_expire(90)",
                    first,
                )
                for c in conns
            )
        )
        names = [r["partition"] for rows in made for r in rows]
        assert len(names) == len(set(names)) == 21  # each made once, by one of them
    finally:
        for c in conns:
            await c.close()


async def test_concurrent_upkeep_passes_all_finish(runtime_pool: asyncpg.Pool) -> None:
    assert all(
        await asyncio.gather(*(upkeep.tend_postback_log(runtime_pool, 90) for _ in range(3)))
    )


async def test_the_runtime_role_cannot_drop_or_make_tables_itself(
    runtime_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    today = utc_day(await now(pool))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime_pool.execute(f"DROP TABLE {name(today)}")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime_pool.execute("CREATE TABLE postback_log_mine (LIKE postback_log)")
    with pytest.raises(asyncpg.PostgresError, match="retention_days"):
        await runtime_pool.fetch("SELECT * FROM postback_log_expire(0)")
