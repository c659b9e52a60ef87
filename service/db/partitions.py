"""The postback log's partitions (schema.sql): one per UTC day, made ahead of time and dropped
whole once older than retention, by functions that run as the tables' owner."""

from __future__ import annotations

import datetime as dt

import asyncpg

from . import translated

DAYS_AHEAD = 3  # partitions are made for today and this many days after it


async def prepare(pool: asyncpg.Pool, days_ahead: int = DAYS_AHEAD) -> list[tuple[str, int]]:
    """Make the partitions missing for today (UTC) and the next `days_ahead` days; each one
    made, with the rows moved into it from the default partition."""
    with translated():
        rows = await pool.fetch(
            "SELECT partition, moved FROM postback_log_prepare("
            "(now() AT TIME ZONE 'UTC')::date, (now() AT TIME ZONE 'UTC')::date + $1::int)",
            days_ahead,
        )
    return [(r["partition"], r["moved"]) for r in rows]


async def expire(pool: asyncpg.Pool, retention_days: int) -> list[tuple[str, int]]:
    """Drop the partitions older than `retention_days` as a whole (and delete the default
    partition's rows that are); each one, with about how many rows went with it."""
    with translated():
        rows = await pool.fetch(
            "SELECT partition, approx_rows FROM postback_log_expire($1::int)", retention_days
        )
    return [(r["partition"], r["approx_rows"]) for r in rows]


async def oldest(pool: asyncpg.Pool) -> dt.datetime | None:
    """When the oldest postback kept was received: one step into each partition's time index."""
    with translated():
        at: dt.datetime | None = await pool.fetchval(
            "SELECT min(received_at) FROM postback_log WHERE id > 0"
        )
    return at
