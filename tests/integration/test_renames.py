"""Renaming a provider: start-up refuses a rename that would let a wall's old transactions be
credited again, and `renamed_from` carries the old name's events over."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from service import renames
from service.app import create_app, database
from service.db.connection import connect
from service.settings import ConfigError, Settings
from tests import helpers
from tests.helpers import AUTH, SPEND_AUTH, medioot, unique


def named(database_url: str, name: str, **extra: Any) -> Settings:
    """The test settings with one Medioot wall called `name`."""
    provider = {"name": name, "protocol": "medioot", "secret": helpers.MEDIOOT_SECRET}
    retired = extra.pop("retired_providers", [])
    return helpers.settings(
        database_url, providers=[{**provider, **extra}], retired_providers=retired
    )


async def send(client: Any, wall: str, params: dict[str, str]) -> str:
    resp = await client.get(f"/postbacks/{wall}", params=params)
    assert resp.status == 200
    return str(await resp.text())


async def balance(client: Any, user: str) -> Decimal:
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    assert resp.status == 200
    return Decimal((await resp.json())["balance"])


async def credit_under_old(aiohttp_client: Any, database_url: str) -> tuple[str, str]:
    """A credit of 10 recorded under the provider name "old"; (user, transaction)."""
    client = await aiohttp_client(create_app(named(database_url, "old")))
    user, tx = unique(), unique("tx")
    assert await send(client, "old", medioot(user, tx, "10")) == "OK"
    await client.close()
    return user, tx


async def test_a_rename_without_renamed_from_is_refused_at_start_up(
    aiohttp_client: Any, fresh_database_url: str
) -> None:
    await credit_under_old(aiohttp_client, fresh_database_url)
    with pytest.raises(ConfigError) as refused:
        async with database(named(fresh_database_url, "new")):
            pass
    line = str(refused.value)
    assert "\n" not in line
    assert "'old'" in line and "'new'" in line
    assert 'renamed_from = "old"' in line and "retired_providers" in line


async def test_the_command_line_refuses_in_one_line_with_exit_2(
    aiohttp_client: Any, fresh_database_url: str, tmp_path: Path
) -> None:
    await credit_under_old(aiohttp_client, fresh_database_url)
    config = tmp_path / "ledger.toml"
    config.write_text(
        helpers.database_toml(fresh_database_url)
        + '[[providers]]\nname = "new"\nprotocol = "medioot"\nsecret = "s"\n'
    )
    for command in ("migrate", "serve"):
        code, out, err = await helpers.run_cli(command, "--config", str(config), limit=60)
        assert code == 2, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: config: providers:"), err


async def test_renamed_from_carries_duplicates_and_reversals_over(
    aiohttp_client: Any, fresh_database_url: str
) -> None:
    user, tx = await credit_under_old(aiohttp_client, fresh_database_url)
    client = await aiohttp_client(create_app(named(fresh_database_url, "new", renamed_from="old")))
    # The wall resends an old transaction to its new address: a duplicate, nothing credited.
    assert await send(client, "new", medioot(user, tx, "10")) == "DUP"
    assert await balance(client, user) == Decimal("10")
    # Its chargeback, sent after the rename, takes the old credit back.
    assert await send(client, "new", medioot(user, tx, "10", status="2")) == "OK"
    assert await balance(client, user) == Decimal("0")
    # New transactions work as ever, and resending them is a duplicate too.
    tx2 = unique("tx")
    assert await send(client, "new", medioot(user, tx2, "4")) == "OK"
    assert await send(client, "new", medioot(user, tx2, "4")) == "DUP"
    assert await balance(client, user) == Decimal("4")
    # The postback log names the wall as configured; the events keep the name they began with.
    resp = await client.get("/v1/postbacks", headers=AUTH, params={"provider": "new"})
    assert len((await resp.json())["postbacks"]) == 4
    resp = await client.get(f"/v1/wallets/{user}/events", headers=AUTH)
    assert {e["provider"] for e in (await resp.json())["events"]} == {"old"}
    await client.close()
    # verify replays the log alone, with no knowledge of the rename: it agrees.
    conn = await connect(fresh_database_url)
    try:
        assert (await helpers.verify_log(conn)).ok
    finally:
        await conn.close()


async def test_retired_providers_lets_a_removed_wall_go(
    aiohttp_client: Any, fresh_database_url: str
) -> None:
    await credit_under_old(aiohttp_client, fresh_database_url)
    async with database(named(fresh_database_url, "new", retired_providers=["old"])):
        pass


async def test_a_spending_key_s_events_are_not_a_vanished_wall(
    aiohttp_client: Any, fresh_database_url: str
) -> None:
    client = await aiohttp_client(create_app(named(fresh_database_url, "old")))
    user = unique()
    assert await send(client, "old", medioot(user, unique("tx"), "10")) == "OK"
    resp = await client.post(
        f"/v1/wallets/{user}/debits",
        json={"amount": "1"},
        headers={**SPEND_AUTH, "Idempotency-Key": unique("idem")},
    )
    assert resp.status == 201, await resp.text()
    await client.close()
    # "old" kept and a second wall added: the spending key's events ("shop") are no wall's.
    two = helpers.settings(
        fresh_database_url,
        providers=[
            {"name": "old", "protocol": "medioot", "secret": helpers.MEDIOOT_SECRET},
            {"name": "other", "protocol": "medioot", "secret": helpers.MEDIOOT_SECRET},
        ],
    )
    async with database(two):
        pass


async def test_renamed_from_refused_when_the_new_name_has_events_already(
    aiohttp_client: Any, fresh_database_url: str
) -> None:
    client = await aiohttp_client(create_app(named(fresh_database_url, "new")))
    assert await send(client, "new", medioot(unique(), unique("tx"), "1")) == "OK"
    await client.close()
    with pytest.raises(ConfigError, match="already holds events under"):
        async with database(named(fresh_database_url, "new", renamed_from="old")):
            pass


def test_problem_is_empty_for_a_new_log_and_for_an_added_wall(database_url: str) -> None:
    settings = named(database_url, "new")
    assert renames.problem(settings, set()) == ""
    assert renames.problem(settings, {"new"}) == ""
    assert renames.problem(settings, {"new", "shop"}) == ""
    # A wall removed while every configured one has events: nothing looks like a rename.
    assert renames.problem(settings, {"new", "gone"}) == ""
    assert renames.problem(settings, {"gone"}) != ""


async def test_a_reload_that_renames_a_wall_without_renamed_from_is_refused(
    aiohttp_client: Any, fresh_database_url: str, tmp_path: Path
) -> None:
    from service.db.connection import create_pool
    from service.live import LiveConfig

    await credit_under_old(aiohttp_client, fresh_database_url)
    config = tmp_path / "ledger.toml"
    live = LiveConfig(named(fresh_database_url, "old"), str(config))
    pool = await create_pool(
        helpers.runtime_url(fresh_database_url), min_size=1, max_size=2, wait_limit=10
    )

    def write(provider: str) -> None:
        config.write_text(
            helpers.database_toml(fresh_database_url)
            + f'[[providers]]\nname = "{provider}"\nprotocol = "medioot"\n'
            f'secret = "{helpers.MEDIOOT_SECRET}"\n'
        )

    write("new")
    assert not await live.reload(pool)  # the old transactions would be credited again
    assert [p.name for p in live.current.settings.providers] == ["old"]
    write('new"\nrenamed_from = "old')
    assert await live.reload(pool)
    assert [p.name for p in live.current.settings.providers] == ["new"]
    await pool.close()
