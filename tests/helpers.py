"""Shared test helpers: signing postbacks the way each wall does, and building settings."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from service.db import read
from service.db.connection import migrate, with_user
from service.domain.chain import ChainKey
from service.domain.events import Event
from service.embedded import RUNTIME_ROLE
from service.settings import Settings, parse

MEDIOOT_SECRET = "test-medioot-secret"
CHAIN_KEY = "test-chain-key-0123456789abcdef-0001"

READ_KEY = "test-read-key-0001"
SPEND_KEY = "test-spend-key-0001"  # scopes read and spend, name "shop"
NO_SCOPE_KEY = "test-no-scope-key-0001"
AUTH = {"Authorization": f"Bearer {READ_KEY}"}
SPEND_AUTH = {"Authorization": f"Bearer {SPEND_KEY}"}


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def unique(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def medioot(
    subid: str,
    transid: str,
    reward: str,
    status: str = "1",
    secret: str = MEDIOOT_SECRET,
    **extra: str,
) -> dict[str, str]:
    """Query parameters of a Medioot postback, signed over the exact strings given."""
    return {
        "subid": subid,
        "transid": transid,
        "reward": reward,
        "status": status,
        "signature": md5(subid + transid + reward + secret),
        **extra,
    }


def chain_key() -> ChainKey:
    return ChainKey(CHAIN_KEY)


def runtime_url(database_url: str) -> str:
    """The same database as the runtime role (which conftest creates and grants)."""
    return with_user(database_url, RUNTIME_ROLE)


async def verify_log(conn: Any) -> Any:
    """`service.verify.verify` with the test chain key, checking the test runtime role."""
    from service.verify import verify

    return await verify(conn, chain_key(), RUNTIME_ROLE)


async def migrate_as_owner(url: str) -> None:
    """schema.sql as the owner `url`, and the runtime role's grants (created if need be)."""
    await migrate(url, runtime_role=RUNTIME_ROLE, create_role=True)


def database_toml(database_url: str) -> str:
    """[database] and [integrity] of a config file: the service as the runtime role, migrations
    as the owner `database_url`, the test chain key. JSON strings are TOML basic strings."""
    return (
        f"[database]\nurl = {json.dumps(runtime_url(database_url))}\n"
        f"owner_url = {json.dumps(database_url)}\n"
        f"[integrity]\nchain_key = {json.dumps(CHAIN_KEY)}\n"
    )


def settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for the owner URL `database_url`: the service works as the runtime role."""
    raw: dict[str, Any] = {
        # Metrics rendered afresh for every scrape, so a test sees the counts of what it just did.
        "server": {"max_body_bytes": 4096, "metrics_max_age": 0},
        "database": {
            "url": runtime_url(database_url),
            "owner_url": database_url,
            "pool_max_size": 10,
            "timeout": 3.0,
        },
        "integrity": {"chain_key": CHAIN_KEY},
        "providers": [
            {"name": "medioot", "protocol": "medioot", "secret": MEDIOOT_SECRET},
        ],
        "api_keys": [
            {"name": "reader", "key": READ_KEY, "scopes": ["read"]},
            {"name": "shop", "key": SPEND_KEY, "scopes": ["read", "spend"]},
            {"name": "noscope", "key": NO_SCOPE_KEY, "scopes": []},
        ],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse(raw, {})


ROOT = Path(__file__).resolve().parents[1]


async def run_cli(
    *args: str, env: dict[str, str] | None = None, limit: float = 120
) -> tuple[int, str, str]:
    """`python -m service <args>` in the repository; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def events_of(pool: Any, user: str) -> list[Event]:
    """A user's events, oldest first, as the API reads them."""
    return await read.wallet_events(pool, user, 0, 100_000)


async def set_event_amount(pool: Any, position: int, amount: str) -> None:
    """Set event `position`'s amount (a numeric's text) as only a superuser can: with the log's
    append-only trigger switched off for the transaction. The edit a tamper test makes, and the
    one that undoes it."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        await conn.execute(
            "UPDATE events SET amount = $2::numeric WHERE position = $1", position, amount
        )
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")


def medioot_wall() -> Any:
    """Medioot's protocol (its built-in profile) as the write path's tests call it."""
    from service.providers import profile

    raw = profile._builtin("medioot")
    return profile.ProfileWall.of(
        profile.compile_profile(profile.decode(raw, "medioot"), "medioot")
    )


def event_message(row: Any, prev: bytes | None) -> bytes:
    """`chain.message` of an event row (its columns, with `amount_text` and `data_text` as the
    database prints them), after `prev`."""
    from service.domain import chain

    return chain.message(
        prev,
        position=row["position"],
        provider=row["provider"],
        key=row["key"],
        type=row["type"],
        user_id=row["user_id"],
        amount_text=row["amount_text"],
        provider_ref=row["provider_ref"],
        test=row["test"],
        data_text=row["data_text"],
        recorded_at=row["recorded_at"],
    )
