"""`verify`: the wallet projection against the fold of the event log, in process and by CLI."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.db.connection import connect
from service.verify import Report
from tests import helpers
from tests.helpers import AUTH, medioot, unique

Client = TestClient[web.Request, web.Application]


# --- helpers ------------------------------------------------------------------------------------


async def send(client: Client, params: dict[str, str], expected: tuple[int, str]) -> None:
    resp = await client.get("/postbacks/medioot", params=params)
    assert (resp.status, await resp.text()) == expected


async def some_traffic(client: Client, user: str) -> None:
    """Credits, a reversal, a duplicate, a conflict and refusals for `user`, through HTTP."""
    t1, t2 = unique("t"), unique("t")
    await send(client, medioot(user, t1, "10.50"), (200, "OK"))
    await send(client, medioot(user, t2, "0.1"), (200, "OK"))
    await send(client, medioot(user, t1, "10.50"), (200, "DUP"))
    await send(client, medioot(user, t1, "99"), (200, "DUP"))  # conflict: nothing applied
    await send(client, medioot(user, t1, "10.50", status="2"), (200, "OK"))
    resp = await client.get(
        "/postbacks/medioot", params=medioot(user, unique("t"), "5", secret="x")
    )
    assert resp.status == 403  # a bad signature
    resp = await client.get("/postbacks/medioot", params=medioot(user, unique("t"), "-1"))
    assert resp.status == 400


async def run_verify(pool: asyncpg.Pool) -> Report:
    async with pool.acquire() as conn:
        return await helpers.verify_log(conn)


def naming(report: Report, user: str) -> list[str]:
    return [line for line in report.differences if repr(user) in line]


async def tampered(
    pool: asyncpg.Pool, user: str, change: str, undo: str
) -> Callable[[], Awaitable[None]]:
    await pool.execute(change, user)

    async def restore() -> None:
        await pool.execute(undo, user)

    return restore


def write_config(path: Path, database_url: str, extra: str = "") -> Path:
    path.write_text(helpers.database_toml(database_url) + extra, encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LEDGER_CONFIG")}
    return {**env, **extra}


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await helpers.run_cli(*args, env=env if env is not None else cli_env(), limit=120)


@pytest.fixture
async def user(client: Client) -> str:
    """A user with a real history of postbacks."""
    user = unique()
    await some_traffic(client, user)
    return user


# --- in process ---------------------------------------------------------------------------------


async def test_verify_agrees_after_real_postbacks(pool: asyncpg.Pool, user: str) -> None:
    report = await run_verify(pool)
    assert report.ok, report.differences
    assert report.differences == []
    assert report.events == await pool.fetchval("SELECT count(*) FROM events")
    assert report.wallets == await pool.fetchval("SELECT count(*) FROM wallets")
    assert report.events >= 3 and report.wallets >= 1
    assert "ok" in report.summary()
    assert "\n" not in report.summary()


async def test_verify_names_a_user_whose_balance_was_changed(pool: asyncpg.Pool, user: str) -> None:
    other = unique()
    await pool.execute("INSERT INTO wallets (user_id) VALUES ($1)", other)
    restore = await tampered(
        pool,
        user,
        "UPDATE wallets SET balance = balance + 1 WHERE user_id = $1",
        "UPDATE wallets SET balance = balance - 1 WHERE user_id = $1",
    )
    try:
        report = await run_verify(pool)
        assert not report.ok
        lines = naming(report, user)
        assert lines, report.differences
        assert report.differences == lines, "only the tampered wallet differs"
        assert any("balance" in line for line in lines)
        assert any("1.1" in line for line in lines), lines  # the projection now says 1.10
        assert not naming(report, other)
        summary = report.summary()
        assert "\n" not in summary and "ok" not in summary.split(":")[1]
    finally:
        await restore()
        await pool.execute("DELETE FROM wallets WHERE user_id = $1", other)
    assert (await run_verify(pool)).ok


@pytest.mark.parametrize(
    ("column", "change", "undo"),
    [
        ("total_credited", "total_credited + 0.01", "total_credited - 0.01"),
        ("total_reversed", "total_reversed + 2", "total_reversed - 2"),
        ("event_count", "event_count + 1", "event_count - 1"),
    ],
)
async def test_verify_names_each_tampered_column(
    pool: asyncpg.Pool, user: str, column: str, change: str, undo: str
) -> None:
    restore = await tampered(
        pool,
        user,
        f"UPDATE wallets SET {column} = {change} WHERE user_id = $1",
        f"UPDATE wallets SET {column} = {undo} WHERE user_id = $1",
    )
    try:
        report = await run_verify(pool)
        lines = naming(report, user)
        assert len(lines) == 1, report.differences
        assert column in lines[0]
    finally:
        await restore()
    assert (await run_verify(pool)).ok


async def test_verify_reports_a_deleted_wallet_as_missing(pool: asyncpg.Pool, user: str) -> None:
    row = await pool.fetchrow("SELECT * FROM wallets WHERE user_id = $1", user)
    assert row is not None
    await pool.execute("DELETE FROM wallets WHERE user_id = $1", user)
    try:
        report = await run_verify(pool)
        assert not report.ok
        lines = naming(report, user)
        assert len(lines) == 1, report.differences
        assert "missing" in lines[0]
    finally:
        columns = list(row.keys())
        await pool.execute(
            f"INSERT INTO wallets ({', '.join(columns)})"
            f" VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})",
            *row.values(),
        )
    assert (await run_verify(pool)).ok


async def test_verify_reports_a_wallet_without_events(pool: asyncpg.Pool, user: str) -> None:
    ghost = unique("ghost")
    await pool.execute(
        "INSERT INTO wallets (user_id, balance, total_credited, event_count) VALUES ($1, 5, 5, 1)",
        ghost,
    )
    try:
        report = await run_verify(pool)
        assert not report.ok
        assert naming(report, ghost), report.differences
        assert not naming(report, user)
    finally:
        await pool.execute("DELETE FROM wallets WHERE user_id = $1", ghost)
    assert (await run_verify(pool)).ok


# --- the command line ---------------------------------------------------------------------------


async def test_cli_migrate_exits_0(database_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ledger.toml", database_url)
    for _ in range(2):
        code, out, err = await run_cli("migrate", "--config", str(config))
        assert code == 0, err
        assert len(out.strip().splitlines()) == 1, out


async def test_cli_verify_clean_exits_0_with_one_line(
    database_url: str, tmp_path: Path, user: str
) -> None:
    config = write_config(tmp_path / "ledger.toml", database_url)
    code, out, err = await run_cli("verify", "--config", str(config))
    assert code == 0, (out, err)
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "ok" in lines[0]
    assert user not in out


async def test_cli_verify_tampered_exits_1_with_the_differences(
    database_url: str, tmp_path: Path, pool: asyncpg.Pool, user: str
) -> None:
    config = write_config(tmp_path / "ledger.toml", database_url)
    ghost = unique("ghost")
    await pool.execute("INSERT INTO wallets (user_id, balance) VALUES ($1, 7)", ghost)
    restore = await tampered(
        pool,
        user,
        "UPDATE wallets SET balance = balance + 1 WHERE user_id = $1",
        "UPDATE wallets SET balance = balance - 1 WHERE user_id = $1",
    )
    try:
        code, out, err = await run_cli("verify", "--config", str(config))
    finally:
        await restore()
        await pool.execute("DELETE FROM wallets WHERE user_id = $1", ghost)
    assert code == 1, (out, err)
    assert user in out
    assert ghost in out
    assert len(out.strip().splitlines()) >= 3, out  # two differences and the summary

    code, out, err = await run_cli("verify", "--config", str(config))
    assert code == 0, (out, err)


# --- exactness, in a database of its own --------------------------------------------------------


@pytest.fixture
async def scratch_database_url(fresh_database_url: str) -> str:
    """A migrated database for one test, so what it leaves behind cannot upset the others."""
    await helpers.migrate_as_owner(fresh_database_url)
    return fresh_database_url


async def test_verify_agrees_on_amounts_at_full_precision(
    aiohttp_client: Any, scratch_database_url: str
) -> None:
    client: Client = await aiohttp_client(create_app(helpers.settings(scratch_database_url)))
    user = unique()
    amount = "999999999999999.99999999999999999999"  # the largest amount allowed
    await send(client, medioot(user, unique("t"), amount), (200, "OK"))
    await send(client, medioot(user, unique("t"), "0.00000000000000000001"), (200, "OK"))
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    balance = (await resp.json())["balance"]

    conn = await connect(scratch_database_url)
    try:
        report = await helpers.verify_log(conn)
        in_events = await conn.fetchval(
            "SELECT sum(amount)::text FROM events WHERE user_id = $1", user
        )
    finally:
        await conn.close()
    assert in_events == "1000000000000000.00000000000000000000"
    assert report.ok, report.differences
    assert balance == in_events
