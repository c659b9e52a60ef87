"""A database written by the previous release, upgraded in place by this code's migrate.

`tests/fixtures/previous_release.sql` is a dump of a database the previous release wrote through
its real HTTP endpoints (`tests/fixtures/make_previous_release.py` made it and says from which
commit); `previous_release.json` holds each wallet's balance then and the number of events. Each
test loads the dump into a fresh, unmigrated database as the owner, runs migrate, and checks that
nothing was lost and that the service carries on where the previous release stopped.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.db.connection import connect
from service.verify import Report
from tests import helpers
from tests.fixtures import make_previous_release as previous

Client = TestClient[web.Request, web.Application]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def expected() -> dict[str, Any]:
    """The fixture's JSON: {"balances": {user: balance string}, "events": count}."""
    data: dict[str, Any] = json.loads(
        (FIXTURES / "previous_release.json").read_text(encoding="utf-8")
    )
    return data


async def load_previous_release(database_url: str) -> None:
    """The previous release's dump, run as one script by the owner `database_url`."""
    sql = (FIXTURES / "previous_release.sql").read_text(encoding="utf-8")
    conn = await connect(database_url, wait=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()  # the dump empties the session's search_path


async def verify_as_owner(database_url: str) -> Report:
    conn = await connect(database_url, wait=10)
    try:
        report: Report = await helpers.verify_log(conn)
    finally:
        await conn.close()
    return report


async def stored(database_url: str) -> tuple[dict[str, str], int]:
    """Every wallet's balance as stored, and the number of events."""
    conn = await connect(database_url, wait=10)
    try:
        rows = await conn.fetch("SELECT user_id, balance::text AS balance FROM wallets")
        events: int = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    return {r["user_id"]: r["balance"] for r in rows}, events


@pytest.fixture
async def upgraded_database_url(fresh_database_url: str) -> str:
    """A fresh database holding the previous release's dump, migrated by this code."""
    await load_previous_release(fresh_database_url)
    await helpers.migrate_as_owner(fresh_database_url)
    return fresh_database_url


@pytest.fixture
async def upgraded_client(aiohttp_client: Any, upgraded_database_url: str) -> Client:
    """The service, with the walls and secrets the fixture was written with, running on the
    upgraded database."""
    client: Client = await aiohttp_client(create_app(previous.settings(upgraded_database_url)))
    return client


async def balance(client: Client, user: str) -> Decimal:
    resp = await client.get(f"/v1/wallets/{user}", headers=helpers.AUTH)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return Decimal(body["balance"])


async def test_fixture_holds_the_previous_release() -> None:
    sql = (FIXTURES / "previous_release.sql").read_text(encoding="utf-8")
    assert sql.startswith("-- A database written by the previous release")
    assert "-- Made with commit " in sql.splitlines()[1]
    want = expected()
    assert want["events"] > 0
    assert {u: Decimal(b) for u, b in want["balances"].items()} == previous.EXPECTED_BALANCES


async def test_previous_release_is_upgraded_in_place(upgraded_database_url: str) -> None:
    want = expected()

    report = await verify_as_owner(upgraded_database_url)
    assert report.ok, report.differences
    assert report.events == want["events"]
    assert report.wallets == len(want["balances"])
    assert await stored(upgraded_database_url) == (want["balances"], want["events"])

    await helpers.migrate_as_owner(upgraded_database_url)  # a second run changes nothing
    report = await verify_as_owner(upgraded_database_url)
    assert report.ok, report.differences
    assert await stored(upgraded_database_url) == (want["balances"], want["events"])


async def test_service_carries_on_after_the_upgrade(
    upgraded_client: Client, upgraded_database_url: str
) -> None:
    want = expected()
    user, transid, reward = previous.MEDIOOT_CREDITS[0]
    before = Decimal(want["balances"][user])
    assert await balance(upgraded_client, user) == before

    new = helpers.medioot(user, "mtx-after-upgrade", "2.25")
    resp = await upgraded_client.get("/postbacks/medioot", params=new)
    assert (resp.status, await resp.text()) == (200, "OK")
    assert await balance(upgraded_client, user) == before + Decimal("2.25")

    replay = helpers.medioot(user, transid, reward)
    resp = await upgraded_client.get("/postbacks/medioot", params=replay)
    assert (resp.status, await resp.text()) == (200, "DUP")
    user, transid, reward = previous.MEDIOOT_REVERSAL
    replay = helpers.medioot(user, transid, reward, status="2")
    resp = await upgraded_client.get("/postbacks/medioot", params=replay)
    assert (resp.status, await resp.text()) == (200, "DUP")
    assert await balance(upgraded_client, user) == before + Decimal("2.25")

    balances, events = await stored(upgraded_database_url)
    assert events == want["events"] + 1
    assert {u: b for u, b in balances.items() if u != user} == {
        u: b for u, b in want["balances"].items() if u != user
    }
    report = await verify_as_owner(upgraded_database_url)
    assert report.ok, report.differences
    assert report.events == want["events"] + 1


async def test_legacy_adgate_conversions_keep_their_history_and_can_be_reversed(
    upgraded_client: Client, upgraded_database_url: str
) -> None:
    """The previous release credited conv-1 twice (its second approval said state=rejected),
    conv-2 once and an approval without conversion_id once: 150 in all. That history stays; a
    `rejected` arriving now reverses what each conversion was credited, once."""
    user = previous.ADGATE_USER
    token = previous.ADGATE_TOKEN
    assert await balance(upgraded_client, user) == Decimal("150")

    async def send(event: str, offer: str, extra: dict[str, str]) -> None:
        query = previous.adgate_query(user, offer, event, "APPROVED", "50", extra)
        resp = await upgraded_client.post(f"/postbacks/adgate/{token}", params=query)
        assert resp.status == 200, await resp.text()

    await send("ag-after-1", "uo-1", {"conversion_id": "conv-1", "state": "rejected"})
    assert await balance(upgraded_client, user) == Decimal("50")  # conv-1's 100 taken back
    await send("ag-after-2", "uo-1", {"conversion_id": "conv-1", "state": "rejected"})
    await send("ag-after-3", "uo-1", {"conversion_id": "conv-1", "state": "approved"})
    assert await balance(upgraded_client, user) == Decimal("50")  # reversed once, credited once
    await send("ag-after-4", "uo-2", {"conversion_id": "conv-2", "state": "rejected"})
    assert await balance(upgraded_client, user) == Decimal("20")

    # Spending works on an upgraded wallet, and verify agrees with all of it.
    resp = await upgraded_client.post(
        f"/v1/wallets/{user}/debits",
        data=b'{"amount": "20"}',
        headers={**helpers.SPEND_AUTH, "Idempotency-Key": "after-upgrade-1"},
    )
    assert resp.status == 201, await resp.text()
    assert await balance(upgraded_client, user) == Decimal("0")
    report = await verify_as_owner(upgraded_database_url)
    assert report.ok, report.differences


async def test_the_postback_log_is_converted_in_place_and_carries_on(
    upgraded_client: Client, upgraded_database_url: str
) -> None:
    conn = await connect(upgraded_database_url, wait=10)
    try:
        assert await conn.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = 'postback_log'::regclass"
        ) == ("p")
        listed = await conn.fetch(
            "SELECT partition::text, isfinite(range_from) AS bounded, range_to, is_default"
            " FROM postback_log_partitions()"
        )
        legacy = listed[0]
        # The old table itself, attached: everything before the midnight after its newest row.
        assert (legacy["partition"], legacy["bounded"]) == ("postback_log_legacy", False)
        old_max = await conn.fetchval("SELECT max(id) FROM postback_log_legacy")
        old_rows = await conn.fetchval("SELECT count(*) FROM postback_log_legacy")
        assert old_max is not None and old_rows > 0
        newest = await conn.fetchval("SELECT max(received_at) FROM postback_log_legacy")
        assert legacy["range_to"] > newest
        assert [r["is_default"] for r in listed][-1]
    finally:
        await conn.close()

    # The old rows, through the API: the page and each one by its id.
    resp = await upgraded_client.get(
        "/v1/postbacks", headers=helpers.AUTH, params={"limit": "1000"}
    )
    assert resp.status == 200, await resp.text()
    page = (await resp.json())["postbacks"]
    assert len(page) == old_rows
    resp = await upgraded_client.get("/v1/postbacks/1", headers=helpers.AUTH)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["id"] == 1

    # A new postback: its id follows the old ones.
    user, _, _ = previous.MEDIOOT_CREDITS[0]
    resp = await upgraded_client.get(
        "/postbacks/medioot", params=helpers.medioot(user, "mtx-after-conversion", "1")
    )
    assert (resp.status, await resp.text()) == (200, "OK")
    resp = await upgraded_client.get("/v1/postbacks", headers=helpers.AUTH, params={"limit": "1"})
    (newest_entry,) = (await resp.json())["postbacks"]
    assert newest_entry["id"] > old_max

    # Migrating again changes nothing.
    conn = await connect(upgraded_database_url, wait=10)
    try:
        before = await conn.fetch("SELECT partition::text FROM postback_log_partitions()")
        await helpers.migrate_as_owner(upgraded_database_url)
        after = await conn.fetch("SELECT partition::text FROM postback_log_partitions()")
        assert before == after
    finally:
        await conn.close()
