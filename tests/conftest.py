"""A real PostgreSQL for the whole session: TEST_DATABASE_URL, or the embedded server under
.data/test-postgres. Every test module gets a database of its own, dropped when it ends.

`database_url` is the owner's (the session's superuser, or TEST_DATABASE_URL's role, which then
needs CREATEDB and CREATEROLE); the service under test works as the runtime role
(`helpers.runtime_url`), which may only read and append events, as in production. On a server of
TEST_DATABASE_URL that asks for passwords, give that role one (~/.pgpass)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.db.connection import connect, create_pool
from service.embedded import EmbeddedPostgres
from service.settings import Settings

from . import helpers

pytest_plugins = ["tests.logcapture", "tests.browser", "tests.processes"]
ROOT = Path(__file__).resolve().parents[1]


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres(ROOT / ".data" / "test-postgres")
    dsn = server.start()
    try:
        yield dsn
    finally:
        server.stop()


async def _create_database(admin: str, name: str, *, migrated: bool = True) -> None:
    conn = await connect(admin, wait=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    if migrated:
        await helpers.migrate_as_owner(with_database(admin, name))


async def _drop_database(admin: str, name: str) -> None:
    conn = await connect(admin, wait=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def database_url(admin_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database for this test module."""
    module = request.module.__name__.rsplit(".", 1)[-1][:30]
    name = f"t_{module}_{uuid.uuid4().hex[:8]}".lower()
    asyncio.run(_create_database(admin_dsn, name))
    try:
        yield with_database(admin_dsn, name)
    finally:
        asyncio.run(_drop_database(admin_dsn, name))


@pytest.fixture
async def fresh_database_url(admin_dsn: str) -> AsyncIterator[str]:
    """An empty database (no schema) for one test, so what it leaves cannot upset the others."""
    name = f"t_fresh_{uuid.uuid4().hex[:12]}"
    await _create_database(admin_dsn, name, migrated=False)
    try:
        yield with_database(admin_dsn, name)
    finally:
        await _drop_database(admin_dsn, name)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return helpers.settings(database_url)


@pytest.fixture
async def client(aiohttp_client: object, settings: Settings) -> TestClient:  # type: ignore[type-arg]
    return await aiohttp_client(create_app(settings))  # type: ignore[operator, no-any-return]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of the owner (a superuser), with the chain key: for setting up and tampering."""
    pool = await create_pool(
        database_url, min_size=1, max_size=10, wait_limit=10, chain_key=helpers.chain_key()
    )
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def runtime_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of the runtime role, as the service has."""
    pool = await create_pool(
        helpers.runtime_url(database_url),
        min_size=1,
        max_size=4,
        wait_limit=10,
        chain_key=helpers.chain_key(),
    )
    try:
        yield pool
    finally:
        await pool.close()
