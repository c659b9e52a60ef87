"""Pools, the schema, and the embedded server's database."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import msgspec

from ..domain.chain import ChainKey
from . import REFUSED_ERRORS, SCHEMA_PATH, UNAVAILABLE_ERRORS, Unavailable, roles, translated

__all__ = [
    "SCHEMA_PATH",
    "apply_schema",
    "connect",
    "create_pool",
    "migrate",
    "transaction_settings",
    "with_user",
]
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


def _settings(chain_key: ChainKey | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    # The chain key's HMAC pads go in the startup packet, as a session setting the events_chain
    # trigger reads: no round trip, and nothing is stored. Only this session can read it.
    settings = dict(extra or {})
    if chain_key is not None:
        settings["ledger.chain_pads"] = chain_key.pads()
    return settings


class _TransactionPooled(asyncpg.Connection):  # type: ignore[misc]
    """A connection to PgBouncer in transaction pooling. Each transaction may run on another
    server connection, so a session setting would reach only one of them (and stay there for
    other clients): the settings go into each writing transaction instead (`transaction_settings`).
    """

    local_settings: dict[str, str] = {}  # noqa: RUF012 (replaced per connection, never mutated)


async def transaction_settings(conn: asyncpg.Connection) -> None:
    """Inside a transaction: set for it the settings its pool's connections could not set at
    connect (through PgBouncer in transaction pooling); nothing otherwise, at no round trip."""
    settings: dict[str, str] = getattr(conn, "local_settings", {})
    if settings:
        calls = ", ".join(
            f"set_config(${2 * i + 1}, ${2 * i + 2}, true)" for i in range(len(settings))
        )
        await conn.execute(f"SELECT {calls}", *[v for kv in settings.items() for v in kv])


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    wait_limit: float,
    chain_key: ChainKey | None = None,
    pgbouncer: bool = False,
) -> asyncpg.Pool:
    """A pool whose acquisitions and statements give up after `wait_limit` seconds; with
    `chain_key`, its connections can append events (in a transaction that called
    `transaction_settings` first). With `pgbouncer`, `dsn` is PgBouncer in transaction pooling:
    no prepared statement is kept (PgBouncer 1.18 cannot route them), and no setting is sent at
    connect (PgBouncer refuses a startup parameter it does not know)."""
    settings = _settings(chain_key)
    options: dict[str, Any]
    if pgbouncer:

        async def init(conn: asyncpg.Connection) -> None:
            await _init_connection(conn)
            conn.local_settings = settings

        options = {
            "init": init,
            "statement_cache_size": 0,
            "connection_class": _TransactionPooled,
        }
    else:
        options = {"init": _init_connection, "server_settings": settings}
    with translated():
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            command_timeout=wait_limit,
            timeout=wait_limit,
            reset=_nothing_to_reset,
            **options,
        )
    return pool


def with_user(dsn: str, user: str) -> str:
    """`dsn` with `user` in place of its user and password (a password, if the role has one,
    then comes from the environment: PGPASSWORD or ~/.pgpass)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{host}"))


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL` on every release: a round trip per request (6 % of a worker's time in a profile of
    wallet reads). Nothing here sets session state on a pooled connection: advisory locks are
    transaction-scoped, cursors live inside transactions, the feed LISTENs on a connection of
    its own, nothing is SET. asyncpg still rolls back a transaction left open before this."""


async def apply_schema(conn: asyncpg.Connection, grant_to: str | None = None) -> None:
    """Apply schema.sql in one transaction; then, with `grant_to`, the runtime role's grants."""
    sql = SCHEMA_PATH.read_text(encoding="utf-8")
    with translated():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(sql)
            if grant_to:
                await roles.grant_runtime(conn, grant_to)


async def migrate(
    dsn: str,
    *,
    runtime_role: str | None = None,
    create_role: bool = False,
    wait: float = 0.0,
) -> list[str]:
    """Apply schema.sql as the owner `dsn` connects as, waiting up to `wait` seconds for the
    database to accept connections. With `runtime_role` (other than the owner): grant it what the
    service needs, creating it first with `create_role`. Returns one line per way the runtime
    role (the owner itself without one) could still rewrite the event log."""
    conn = await connect(dsn, wait=wait)
    try:
        with translated():
            owner = await roles.current_role(conn)
            runtime = runtime_role or owner
            if create_role and runtime != owner:
                await roles.ensure_role(conn, runtime)
        await apply_schema(conn, grant_to=runtime if runtime != owner else None)
        with translated():
            return await roles.runtime_problems(conn, runtime)
    finally:
        await conn.close()


# verify and checkpoint: a session that cannot write, and whose built-in functions and operators
# no object in the ledger's schema can shadow.
READ_ONLY = {"default_transaction_read_only": "on", "search_path": "pg_catalog, public"}


async def role_of(dsn: str, *, wait: float = 0.0) -> str:
    """The role a connection to `dsn` works as."""
    conn = await connect(dsn, wait=wait)
    try:
        with translated():
            return await roles.current_role(conn)
    finally:
        await conn.close()


async def connect(
    dsn: str,
    *,
    wait: float = 0.0,
    chain_key: ChainKey | None = None,
    server_settings: dict[str, str] | None = None,
    **kwargs: Any,
) -> asyncpg.Connection:
    deadline = time.monotonic() + wait
    settings = _settings(chain_key, server_settings)
    while True:
        try:
            with translated():
                conn: asyncpg.Connection = await asyncpg.connect(
                    dsn, timeout=10, server_settings=settings, **kwargs
                )
                await _init_connection(conn)  # the same codecs as every pooled connection
                return conn
        except Unavailable as exc:
            # A role or database that does not exist (yet: verify does not migrate), a refused
            # login: waiting will not help.
            if isinstance(exc.__cause__, REFUSED_ERRORS) or time.monotonic() >= deadline:
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
