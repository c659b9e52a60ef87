"""Tamper evidence against the service's own role and against the tables' owner: grants, the
keyed chain, a read-only verify that reports what it finds, checkpoints, and the upgrade of a
log written before the chain key existed."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service import keys
from service.app import create_app
from service.db.connection import connect, create_pool
from service.domain.chain import ChainKey
from service.embedded import RUNTIME_ROLE
from tests import helpers
from tests.helpers import medioot, unique

Client = TestClient[web.Request, web.Application]
OTHER_KEY = "another-chain-key-0123456789abcdef-02"


@dataclass
class Ledger:
    url: str  # the owner's
    client: Client
    owner: asyncpg.Pool  # a superuser pool with the chain key: what the tests tamper with
    config: Path

    async def credit(self, user: str, amount: str) -> int:
        tx = unique("tx")
        resp = await self.client.get("/postbacks/medioot", params=medioot(user, tx, amount))
        assert (resp.status, await resp.text()) == (200, "OK")
        position: int = await self.owner.fetchval(
            "SELECT position FROM events WHERE provider_ref = $1", tx
        )
        return position

    async def cli(self, *args: str, config: Path | None = None) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LEDGER_CONFIG")}
        return await helpers.run_cli(*args, "--config", str(config or self.config), env=env)


@pytest.fixture
async def ledger(
    fresh_database_url: str, aiohttp_client: Any, tmp_path: Path
) -> AsyncIterator[Ledger]:
    """A database of this test's own (it will be tampered with), the service on it, some users."""
    await helpers.migrate_as_owner(fresh_database_url)
    client = await aiohttp_client(create_app(helpers.settings(fresh_database_url)))
    owner = await create_pool(
        fresh_database_url, min_size=1, max_size=2, wait_limit=10, chain_key=helpers.chain_key()
    )
    config = tmp_path / "ledger.toml"
    config.write_text(helpers.database_toml(fresh_database_url), encoding="utf-8")
    ledger = Ledger(fresh_database_url, client, owner, config)
    try:
        for user in (unique(), unique()):
            for amount in ("5", "7.50", "9"):
                await ledger.credit(user, amount)
        yield ledger
    finally:
        await owner.close()


# What an owner of the tables can do with the append-only trigger off: recompute a user's chain
# from an edited event on. Each form of the hash, as SQL over the row `e` and the previous hash $2.
UNKEYED = "hash = event_hash($2, e), chain = 0"
SHA256_AS_KEYED = "hash = event_hash($2, e)"
KEYED = "hash = event_hmac($2, e, $3), chain = 1"


async def rewrite(owner: asyncpg.Pool, position: int, amount: str, chain_sql: str) -> None:
    """Edit the amount of event `position`, recompute its user's chain from there with
    `chain_sql`, and fix the wallet to match: nothing but the chain tells."""
    pads = helpers.chain_key().pads()
    async with owner.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        user, old = await conn.fetchrow(
            "SELECT user_id, amount FROM events WHERE position = $1", position
        )
        await conn.execute("UPDATE events SET amount = $2 WHERE position = $1", position, amount)
        prev = await conn.fetchval(
            "SELECT hash FROM events WHERE user_id = $1 AND position < $2"
            " ORDER BY position DESC LIMIT 1",
            user,
            position,
        )
        rows = await conn.fetch(
            "SELECT position FROM events WHERE user_id = $1 AND position >= $2 ORDER BY position",
            user,
            position,
        )
        for (p,) in rows:
            args = (p, prev, pads) if "$3" in chain_sql else (p, prev)
            prev = await conn.fetchval(
                f"UPDATE events AS e SET prev_hash = $2, {chain_sql} WHERE position = $1"
                " RETURNING hash",
                *args,
            )
        delta = Decimal(amount) - old
        await conn.execute(
            "UPDATE wallets SET balance = balance + $2, total_credited = total_credited + $2"
            " WHERE user_id = $1",
            user,
            delta,
        )
        await conn.execute(
            "UPDATE settlements SET credited = $2 WHERE credit_key ="
            " (SELECT key FROM events WHERE position = $1)",
            position,
            Decimal(amount),
        )
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")


# --- the runtime role ---------------------------------------------------------------------------


async def test_the_service_works_as_the_runtime_role(ledger: Ledger) -> None:
    pool = ledger.client.app[keys.POOL]
    assert await pool.fetchval("SELECT current_user") == RUNTIME_ROLE
    assert not await pool.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET amount = amount + 1",
        "DELETE FROM events",
        "TRUNCATE events",
        "ALTER TABLE events DISABLE TRIGGER events_append_only",
        "ALTER TABLE events DISABLE TRIGGER ALL",
        "DROP TRIGGER events_chain ON events",
        "CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    ],
    ids=["update", "delete", "truncate", "disable", "disable-all", "drop", "replace-function"],
)
async def test_the_runtime_role_cannot_change_the_log_or_its_triggers(
    runtime_pool: asyncpg.Pool, pool: asyncpg.Pool, statement: str
) -> None:
    user = unique()
    await runtime_pool.execute(
        "INSERT INTO events (provider, key, type, user_id, amount, provider_ref)"
        " VALUES ('medioot', $1, 'credited', $2, 1, 'r')",
        unique("k"),
        user,
    )
    before = await pool.fetch("SELECT * FROM events ORDER BY position")
    refused = r"permission denied|must be owner"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refused):
        await runtime_pool.execute(statement)
    assert await pool.fetch("SELECT * FROM events ORDER BY position") == before
    enabled = await pool.fetch(
        "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 'events'::regclass"
        " AND NOT tgisinternal"
    )
    assert sorted(r[0] for r in enabled) == ["O", "O", "O"]


async def test_the_runtime_role_may_write_the_projections(runtime_pool: asyncpg.Pool) -> None:
    user = unique()
    await runtime_pool.execute("INSERT INTO wallets (user_id) VALUES ($1)", user)
    await runtime_pool.execute("UPDATE wallets SET balance = 2.5 WHERE user_id = $1", user)
    assert await runtime_pool.fetchval(
        "SELECT balance FROM wallets WHERE user_id = $1", user
    ) == Decimal("2.5")


async def test_an_insert_without_the_chain_key_is_refused(database_url: str) -> None:
    conn = await connect(helpers.runtime_url(database_url))
    try:
        with pytest.raises(asyncpg.PostgresError, match="no chain key"):
            await conn.execute(
                "INSERT INTO events (provider, key, type, user_id, amount, provider_ref)"
                " VALUES ('medioot', $1, 'credited', 'u', 1, 'r')",
                unique("k"),
            )
    finally:
        await conn.close()


async def test_new_events_are_keyed_with_the_configured_key(
    runtime_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    key = unique("k")
    await runtime_pool.execute(
        "INSERT INTO events (provider, key, type, user_id, amount, provider_ref, data)"
        " VALUES ('medioot', $1, 'credited', $2, 1.50, 'r', $3)",
        key,
        "".join(map(chr, range(1, 128))) + '"user" \u00e9\u2028\U0001f600',
        {"nested": {"b": 1.5, "a": [1, "two"], "ab": None}, "\u00e9": "\x01"},
    )
    row = await pool.fetchrow(
        "SELECT e.*, event_message(prev_hash, e) AS message, amount::text AS amount_text,"
        " data::text AS data_text FROM events AS e WHERE key = $1",
        key,
    )
    assert row["chain"] == 1
    assert bytes(row["hash"]) == helpers.chain_key().mac(bytes(row["message"]))
    assert bytes(row["hash"]) != ChainKey(OTHER_KEY).mac(bytes(row["message"]))
    # verify rebuilds the same bytes on its own, without the database's function.
    prev = None if row["prev_hash"] is None else bytes(row["prev_hash"])
    assert bytes(row["message"]) == helpers.event_message(row, prev)


# --- the owner ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chain_sql", "expected"),
    [
        (UNKEYED, "has an unkeyed hash, but keyed hashes began at event"),
        (SHA256_AS_KEYED, "its hash does not match its contents"),
    ],
    ids=["as-unkeyed", "sha256-marked-keyed"],
)
async def test_an_owner_rewrite_with_a_recomputed_unkeyed_chain_is_caught(
    ledger: Ledger, chain_sql: str, expected: str
) -> None:
    user = unique()
    await ledger.credit(user, "1")
    position = await ledger.credit(user, "2")
    await ledger.credit(user, "3")
    await rewrite(ledger.owner, position, "200", chain_sql)
    code, out, err = await ledger.cli("verify")
    assert code == 1, (out, err)
    assert out.splitlines()[0].startswith(f"event {position} (user {user!r}): {expected}"), out
    assert "balance" not in out  # the wallet was fixed: only the chain tells


async def test_an_owner_rewrite_with_the_key_passes_verify_without_a_checkpoint(
    ledger: Ledger,
) -> None:
    # The limit of the chain alone: whoever holds the key and the owner role can recompute it.
    position = await ledger.credit(unique(), "2")
    await rewrite(ledger.owner, position, "200", KEYED)
    code, out, err = await ledger.cli("verify")
    assert code == 0, (out, err)


@pytest.mark.parametrize("trigger", ["events_append_only", "events_no_truncate", "events_chain"])
async def test_verify_leaves_a_disabled_trigger_disabled_and_reports_it(
    ledger: Ledger, trigger: str
) -> None:
    await ledger.owner.execute(f"ALTER TABLE events DISABLE TRIGGER {trigger}")
    code, out, err = await ledger.cli("verify")
    assert code == 1, (out, err)
    assert f"events trigger {trigger} is disabled" in out.splitlines()
    assert (
        await ledger.owner.fetchval(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgname = $1", trigger
        )
        == "D"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (f"GRANT UPDATE, TRUNCATE ON events TO {RUNTIME_ROLE}", "has UPDATE, TRUNCATE on"),
        ("GRANT DELETE ON events TO PUBLIC", "has DELETE on"),
        (f"ALTER TABLE events OWNER TO {RUNTIME_ROLE}", "owns the events table"),
        ("DROP TRIGGER events_no_truncate ON events", "events trigger events_no_truncate is"),
        (
            "CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
            "function events_refuse_change() differs from schema.sql",
        ),
        (
            # Code of the owner that runs in the service's sessions could read the chain key.
            "CREATE OR REPLACE FUNCTION event_hmac(prev bytea, e events, pads text)"
            " RETURNS bytea LANGUAGE sql STABLE AS $$ SELECT sha256(convert_to(pads, 'UTF8')) $$",
            "function event_hmac() differs from schema.sql",
        ),
        (
            "CREATE TRIGGER events_zz BEFORE INSERT ON events FOR EACH ROW"
            " EXECUTE FUNCTION events_chain()",
            "events trigger events_zz is not defined by schema.sql",
        ),
    ],
    ids=[
        "grant",
        "grant-public",
        "owner",
        "dropped-trigger",
        "replaced-function",
        "replaced-hmac",
        "extra-trigger",
    ],
)
async def test_verify_reports_a_weakened_protection_without_repairing_it(
    ledger: Ledger, change: str, expected: str
) -> None:
    await ledger.owner.execute(change)
    for _ in range(2):  # the first verify repaired nothing
        code, out, err = await ledger.cli("verify")
        assert code == 1, (out, err)
        assert any(expected in line for line in out.splitlines()), out


async def test_without_an_owner_url_start_up_warns_and_verify_fails(
    ledger: Ledger, tmp_path: Path
) -> None:
    # As before: `url` migrates and works; here it is the owner (and a superuser) itself.
    config = tmp_path / "owner-only.toml"
    save(
        config,
        f"[database]\nurl = {json.dumps(ledger.url)}\n"
        f"[integrity]\nchain_key = {json.dumps(helpers.CHAIN_KEY)}\n",
    )
    code, out, err = await ledger.cli("migrate", config=config)
    assert code == 0, (out, err)
    warnings = [json.loads(line) for line in err.splitlines() if "tamper evidence" in line]
    assert any("owner_url is not set" in w["event"] for w in warnings), err
    assert any("is a superuser" in w.get("problem", "") for w in warnings), err
    code, out, err = await ledger.cli("verify", config=config)
    assert code == 1, (out, err)
    assert "is a superuser" in out.splitlines()[0]


async def test_verify_does_not_apply_the_schema(fresh_database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(helpers.database_toml(fresh_database_url), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LEDGER_CONFIG")}
    code, out, err = await helpers.run_cli("verify", "--config", str(config), env=env)
    assert code == 1, (out, err)
    assert "events" in err and len(err.strip().splitlines()) == 1, err
    conn = await connect(fresh_database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('events')") is None
    finally:
        await conn.close()


# --- checkpoints --------------------------------------------------------------------------------


def save(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


async def take_checkpoint(ledger: Ledger, path: Path, config: Path | None = None) -> dict[str, Any]:
    code, out, err = await ledger.cli("checkpoint", config=config)
    assert code == 0, (out, err)
    assert len(out.splitlines()) == 1, out
    save(path, out)
    document: dict[str, Any] = json.loads(out)
    return document


async def test_a_checkpoint_verifies_while_the_log_grows(ledger: Ledger, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    document = await take_checkpoint(ledger, checkpoint)
    assert document["events"] == 6 and document["users"] == 2
    assert helpers.CHAIN_KEY not in checkpoint.read_text()
    await ledger.credit(unique(), "1")
    code, out, err = await ledger.cli("verify", "--checkpoint", str(checkpoint))
    assert code == 0, (out, err)
    assert "checkpoint" in out and "matches" in out
    assert len(out.splitlines()) == 1


async def test_a_rewrite_with_the_key_before_a_checkpoint_is_caught(
    ledger: Ledger, tmp_path: Path
) -> None:
    user = unique()
    position = await ledger.credit(user, "2")
    await ledger.credit(user, "3")
    checkpoint = tmp_path / "checkpoint.json"
    await take_checkpoint(ledger, checkpoint)
    await rewrite(ledger.owner, position, "200", KEYED)
    code, out, err = await ledger.cli("verify")
    assert code == 0, (out, err)  # the chain is consistent: it was recomputed with the key
    code, out, err = await ledger.cli("verify", "--checkpoint", str(checkpoint))
    assert code == 1, (out, err)
    assert "history before the checkpoint was rewritten" in out.splitlines()[0], out


async def test_a_new_user_slipped_in_before_a_checkpoint_is_caught(
    ledger: Ledger, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    await take_checkpoint(ledger, checkpoint)
    # An event inserted later with an old transaction id, as only a trigger-less owner can.
    async with ledger.owner.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_chain")
        await conn.execute(
            "INSERT INTO events (provider, key, type, user_id, amount, provider_ref, hash, txid)"
            " VALUES ('medioot', $1, 'credited', $2, 1, 'r', '\\x00', '3')",
            unique("k"),
            unique(),
        )
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_chain")
    code, out, err = await ledger.cli("verify", "--checkpoint", str(checkpoint))
    assert code == 1, (out, err)
    assert any("history before the checkpoint was rewritten" in line for line in out.splitlines())


@pytest.mark.parametrize(
    "alter",
    [
        lambda d: {**d, "events": d["events"] + 1},
        lambda d: {**d, "heads": "0" * 64},
        lambda d: {**d, "boundary": d["boundary"] - 1},
        lambda d: {**d, "signature": ""},
        lambda d: {k: v for k, v in d.items() if k != "signature"},
    ],
    ids=["events", "heads", "boundary", "empty-signature", "no-signature"],
)
async def test_an_altered_checkpoint_is_refused(ledger: Ledger, tmp_path: Path, alter: Any) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    document = await take_checkpoint(ledger, checkpoint)
    checkpoint.write_text(json.dumps(alter(document)), encoding="utf-8")
    code, out, err = await ledger.cli("verify", "--checkpoint", str(checkpoint))
    assert code == 2, (out, err)
    assert "signature does not match" in err and len(err.strip().splitlines()) == 1, err


async def test_a_checkpoint_signed_with_another_key_is_refused(
    ledger: Ledger, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(
        ledger.config.read_text().replace(helpers.CHAIN_KEY, OTHER_KEY), encoding="utf-8"
    )
    # The other key cannot even verify this log: its chains are keyed with the test key.
    code, out, _ = await ledger.cli("checkpoint", config=other)
    assert code == 1 and out == ""
    # A checkpoint made and signed elsewhere with the other key is refused here.
    checkpoint = tmp_path / "checkpoint.json"
    document = await take_checkpoint(ledger, checkpoint)
    from service.domain.checkpoint import Checkpoint, encode

    forged = Checkpoint(**{**document, "signature": ""}).signed(ChainKey(OTHER_KEY))
    checkpoint.write_bytes(encode(forged))
    code, out, err = await ledger.cli("verify", "--checkpoint", str(checkpoint))
    assert code == 2, (out, err)
    assert "signed with another chain key" in err


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", '{"format": "x"}'])
async def test_a_file_that_is_not_a_checkpoint_is_refused(
    ledger: Ledger, tmp_path: Path, content: str
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_text(content, encoding="utf-8")
    code, out, err = await ledger.cli("verify", "--checkpoint", str(checkpoint))
    assert code == 2, (out, err)
    assert err.startswith("error: checkpoint") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


async def test_a_checkpoint_is_taken_beside_differences_that_leave_history_intact(
    ledger: Ledger, tmp_path: Path
) -> None:
    await ledger.owner.execute("UPDATE wallets SET balance = balance + 1")
    await ledger.owner.execute("ALTER TABLE events DISABLE TRIGGER events_no_truncate")
    code, out, err = await ledger.cli("checkpoint")
    assert code == 0, (out, err)
    assert "balance" in err and "events_no_truncate is disabled" in err
    save(tmp_path / "checkpoint.json", out)
    await ledger.owner.execute("UPDATE wallets SET balance = balance - 1")
    await ledger.owner.execute("ALTER TABLE events ENABLE TRIGGER events_no_truncate")
    code, out, err = await ledger.cli("verify", "--checkpoint", str(tmp_path / "checkpoint.json"))
    assert code == 0, (out, err)


async def test_checkpoint_refuses_a_log_with_a_broken_chain(ledger: Ledger) -> None:
    user = unique()
    position = await ledger.credit(user, "2")
    await rewrite(ledger.owner, position, "200", SHA256_AS_KEYED)
    code, out, err = await ledger.cli("checkpoint")
    assert code == 1
    assert out == ""
    assert f"event {position} (user {user!r})" in err


# --- upgrading a log from before the chain key --------------------------------------------------

# The chain trigger as it was before the chain key: plain sha256, no `chain` column.
_OLD_CHAIN = """
CREATE OR REPLACE FUNCTION events_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT hash INTO NEW.prev_hash FROM events
    WHERE user_id = NEW.user_id ORDER BY position DESC LIMIT 1;
    NEW.hash := event_hash(NEW.prev_hash, NEW);
    RETURN NEW;
END;
$$;
ALTER TABLE events DROP COLUMN chain;
"""


async def test_an_old_unkeyed_log_upgrades_in_place_and_verifies(
    fresh_database_url: str, aiohttp_client: Any, tmp_path: Path
) -> None:
    await helpers.migrate_as_owner(fresh_database_url)
    owner = await connect(fresh_database_url)
    try:
        await owner.execute(_OLD_CHAIN)
    finally:
        await owner.close()
    # The service writes through the old trigger (its key is ignored there).
    settings = helpers.settings(fresh_database_url)
    client = await aiohttp_client(create_app(settings, migrate=False))
    user = unique()
    for amount in ("1", "2.50"):
        params = medioot(user, unique("t"), amount)
        assert await (await client.get("/postbacks/medioot", params=params)).text() == "OK"
    await client.close()

    config = tmp_path / "ledger.toml"
    config.write_text(helpers.database_toml(fresh_database_url), encoding="utf-8")
    ledger = Ledger(fresh_database_url, client, None, config)  # type: ignore[arg-type]
    code, out, err = await ledger.cli("migrate")
    assert code == 0, (out, err)
    code, out, err = await ledger.cli("verify")
    assert code == 0, (out, err)
    assert "2 events unkeyed" in out

    client = await aiohttp_client(create_app(settings))
    params = medioot(user, unique("t"), "3")
    assert await (await client.get("/postbacks/medioot", params=params)).text() == "OK"
    pool = client.app[keys.POOL]
    rows = await pool.fetch(
        "SELECT chain, prev_hash, hash FROM events WHERE user_id = $1 ORDER BY position", user
    )
    assert [r["chain"] for r in rows] == [0, 0, 1]
    assert rows[2]["prev_hash"] == rows[1]["hash"]  # the keyed chain goes on from the old head
    code, out, err = await ledger.cli("verify")
    assert code == 0, (out, err)
    assert "3 events" in out and "2 events unkeyed" in out
