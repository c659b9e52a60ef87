"""Pools, the schema, and the embedded server's database."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from . import UNAVAILABLE_ERRORS, Unavailable, translated

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema.sql"
# Any constant will do: it only keeps two processes from applying the schema at once.
_SCHEMA_LOCK = 0x5CE3A


# jsonb numbers are `numeric`: decode a fraction to a Decimal, never a float (a receipt's
# 12345678.123456789012345 must come back with every digit). The API encodes them as numbers.
_decode_jsonb = msgspec.json.Decoder(float_hook=Decimal).decode


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: msgspec.json.encode(v).decode(),
        decoder=_decode_jsonb,
        schema="pg_catalog",
    )


async def create_pool(dsn: str, *, min_size: int, max_size: int, wait_limit: float) -> asyncpg.Pool:
    """A pool whose acquisitions and statements give up after `wait_limit` seconds."""
    with translated():
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            command_timeout=wait_limit,
            timeout=wait_limit,
            init=_init_connection,
            reset=_nothing_to_reset,
        )
    return pool


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL` on every release: a round trip per request (6 % of a worker's time in a profile of
    wallet reads). Nothing here sets session state on a pooled connection: advisory locks are
    transaction-scoped, cursors live inside transactions, the feed LISTENs on a connection of
    its own, nothing is SET. asyncpg still rolls back a transaction left open before this."""


async def apply_schema(conn: asyncpg.Connection) -> None:
    sql = SCHEMA_PATH.read_text(encoding="utf-8")
    with translated():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(sql)


async def migrate(dsn: str, *, wait: float = 0.0) -> None:
    """Apply schema.sql, waiting up to `wait` seconds for the database to accept connections."""
    conn = await connect(dsn, wait=wait)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()


async def connect(dsn: str, *, wait: float = 0.0, **kwargs: Any) -> asyncpg.Connection:
    deadline = time.monotonic() + wait
    while True:
        try:
            with translated():
                conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10, **kwargs)
                await _init_connection(conn)  # the same codecs as every pooled connection
                return conn
        except Unavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)


async def ensure_database(admin_dsn: str, name: str) -> None:
    """Create database `name` unless it exists (the embedded server starts with none)."""
    conn = await connect(admin_dsn, wait=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # another process created it first
    finally:
        await conn.close()


async def ping(pool: asyncpg.Pool, wait_limit: float) -> bool:
    try:
        async with asyncio.timeout(wait_limit):
            return bool(await pool.fetchval("SELECT 1"))
    except UNAVAILABLE_ERRORS:
        return False
