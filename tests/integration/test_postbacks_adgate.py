"""AdGate Magic Receipts postbacks through HTTP against real PostgreSQL,
with the receipt-offer API and `verify` over what they recorded."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from ops.chaos.dbproxy import DatabaseProxy
from service.app import create_app
from service.db import write
from service.db.connection import apply_schema
from service.domain import receipt_offers, settlement
from service.domain.events import EventType, Postback
from service.domain.receipt_offers import APPROVED, AWARD_PENDING, MANUAL_REVIEW, REJECTED
from service.providers import adgate_receipts
from service.settings import Settings
from service.verify import Report
from tests import helpers
from tests.helpers import AUTH, unique

Client = TestClient[web.Request, web.Application]
Json = dict[str, Any]

TOKEN = "adgate-url-token_0123456789"
NAME = "adgate"


def adgate_settings(
    database_url: str,
    *,
    allowed_ips: Sequence[str] = (),
    trusted_proxies: Sequence[str] = (),
    **database: Any,
) -> Settings:
    provider: Json = {"name": NAME, "protocol": "adgate_receipts", "url_token": TOKEN}
    if allowed_ips:
        provider["allowed_ips"] = list(allowed_ips)
    return helpers.settings(
        database_url,
        server={"max_body_bytes": 65536, "trusted_proxies": list(trusted_proxies)},
        providers=[provider],
        **({"database": database} if database else {}),
    )


@pytest.fixture
def settings(database_url: str) -> Settings:
    return adgate_settings(database_url)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Client:
    app_client: Client = await aiohttp_client(create_app(settings))
    return app_client


# --- helpers ------------------------------------------------------------------------------------


def params(
    user: str,
    offer: str,
    event: str,
    status: str,
    points: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The query of one postback, as the URL macros of the seed fill it."""
    query = {
        "conversion_id": unique("conv"),
        "s1": user,
        "shm_upload_id": f"up-{offer}",
        "shm_upload_offer_id": offer,
        "shm_offer_id": "397622",
        "shm_offer_name": "Apples",
        "shm_status": status,
        "shm_event_id": event,
        "shm_datetime": "2024-05-01 12:00:00",
        "country": "US",
        **extra,
    }
    if points is not None:
        query["points"] = points
    return query


async def send(
    client: Client,
    query: dict[str, str],
    *,
    token: str = TOKEN,
    body: bytes | None = None,
    headers: Any = None,
) -> tuple[int, str]:
    path = f"/postbacks/{NAME}/{token}"
    if body is None:
        resp = await client.post(path, params=query, headers=headers)
    else:
        merged = CIMultiDict({"Content-Type": "application/json"})
        merged.update(headers or {})
        resp = await client.post(path, params=query, data=body, headers=merged)
    return resp.status, await resp.text()


async def offer_body(client: Client, offer: str, provider: str = NAME) -> tuple[int, Json]:
    resp = await client.get(f"/v1/receipt-offers/{provider}/{offer}", headers=AUTH)
    body: Json = await resp.json()
    return resp.status, body


async def offer_state(client: Client, offer: str) -> Json:
    status, body = await offer_body(client, offer)
    assert status == 200, body
    return body


async def balance(client: Client, user: str) -> str | None:
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    if resp.status == 404:
        return None
    body: Json = await resp.json()
    return str(body["balance"])


async def log_outcomes(pool: asyncpg.Pool, offer: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT outcome FROM postback_log WHERE provider = $1"
        " AND params->>'shm_upload_offer_id' = $2 ORDER BY id",
        NAME,
        offer,
    )
    return [r["outcome"] for r in rows]


async def last_log(pool: asyncpg.Pool) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow(
        "SELECT * FROM postback_log WHERE provider = $1 ORDER BY id DESC LIMIT 1", NAME
    )
    return row


async def events_of(pool: asyncpg.Pool, event: str) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM events WHERE provider = $1 AND provider_ref = $2", NAME, event
    )
    return n


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def outcome_count(outcome: str) -> float:
    return counter("ledger_postbacks_total", provider=NAME, outcome=outcome)


def auth_failures(reason: str) -> float:
    return counter("ledger_postback_signature_failures_total", provider=NAME, reason=reason)


async def run_verify(pool: asyncpg.Pool) -> Report:
    async with pool.acquire() as conn:
        return await helpers.verify_log(conn)


def as_postback(event: Json) -> Postback:
    """An event of the API, in the shape the pure state machine takes."""
    return Postback(
        provider=event["provider"],
        key=f"event:{event['provider_ref']}",
        type=EventType(event["type"]),
        user_id="",
        amount=Decimal(event["amount"]),
        provider_ref=event["provider_ref"],
        data=event["data"],
    )


OK = (200, "OK")


# --- the state machine through HTTP --------------------------------------------------------------


async def test_full_lifecycle(client: Client, pool: asyncpg.Pool) -> None:
    user, offer = unique(), unique("uo")
    ids = [unique("ev") for _ in range(4)]
    credited, ignored = outcome_count("credited"), outcome_count("ignored")

    assert await send(client, params(user, offer, ids[0], MANUAL_REVIEW)) == OK
    assert (await offer_state(client, offer))["status"] == MANUAL_REVIEW
    assert await balance(client, user) == "0"

    assert await send(client, params(user, offer, ids[1], AWARD_PENDING)) == OK
    assert (await offer_state(client, offer))["status"] == AWARD_PENDING
    assert await balance(client, user) == "0"

    assert await send(client, params(user, offer, ids[2], APPROVED, "10.50")) == OK
    state = await offer_state(client, offer)
    assert (state["status"], state["points_credited"]) == (APPROVED, "10.50")
    assert await balance(client, user) == "10.50"

    assert await send(client, params(user, offer, ids[3], REJECTED, shm_reason_text="late")) == OK
    state = await offer_state(client, offer)
    assert {k: state[k] for k in ("provider", "upload_offer_id", "upload_id", "offer_id")} == {
        "provider": NAME,
        "upload_offer_id": offer,
        "upload_id": f"up-{offer}",
        "offer_id": "397622",
    }
    assert (state["status"], state["user_id"], state["points_credited"]) == (
        APPROVED,
        user,
        "10.50",
    )
    assert (state["approvals"], state["event_count"]) == (1, 4)
    events = state["events"]
    assert [e["provider_ref"] for e in events] == ids
    assert [e["data"]["status"] for e in events] == [
        MANUAL_REVIEW,
        AWARD_PENDING,
        APPROVED,
        REJECTED,
    ]
    assert [e["amount"] for e in events] == ["0", "0", "10.50", "0"]
    assert {e["type"] for e in events} == {"receipt_status_changed"}
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert events[3]["data"]["shm_reason_text"] == "late"
    assert await balance(client, user) == "10.50"

    assert await log_outcomes(pool, offer) == [
        "status_changed",
        "status_changed",
        "credited",
        "ignored",
    ]
    ignored_log = await last_log(pool)
    assert (ignored_log["http_status"], ignored_log["event_position"]) == (200, positions[3])
    assert "APPROVED" in ignored_log["detail"]
    assert outcome_count("credited") == credited + 1
    assert outcome_count("ignored") == ignored + 1

    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    wallet = await resp.json()
    assert (wallet["total_credited"], wallet["total_reversed"], wallet["event_count"]) == (
        "10.50",
        "0",
        4,
    )


async def test_two_approvals_credit_both(client: Client, pool: asyncpg.Pool) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "10")) == OK
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "5.5")) == OK
    state = await offer_state(client, offer)
    assert (state["status"], state["points_credited"], state["approvals"]) == (
        APPROVED,
        "15.5",
        2,
    )
    assert await balance(client, user) == "15.5"
    assert await log_outcomes(pool, offer) == ["credited", "credited"]


async def test_rejected_then_review_then_approved(client: Client, pool: asyncpg.Pool) -> None:
    user, offer = unique(), unique("uo")
    steps = [(REJECTED, None), (MANUAL_REVIEW, None), (APPROVED, "3")]
    for status, points in steps:
        assert await send(client, params(user, offer, unique("ev"), status, points)) == OK
        assert (await offer_state(client, offer))["status"] == status
    assert await balance(client, user) == "3"
    assert (await offer_state(client, offer))["points_credited"] == "3"
    assert await log_outcomes(pool, offer) == ["status_changed", "status_changed", "credited"]


async def test_approved_with_zero_points_changes_status_only(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "0")) == OK
    state = await offer_state(client, offer)
    assert (state["status"], state["points_credited"], state["approvals"]) == (APPROVED, "0", 1)
    assert await balance(client, user) == "0"
    assert await log_outcomes(pool, offer) == ["status_changed"]


async def test_lowercase_status_is_the_same_status(client: Client) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), "approved", "2")) == OK
    state = await offer_state(client, offer)
    assert (state["status"], state["events"][0]["data"]["status"]) == (APPROVED, APPROVED)
    assert await balance(client, user) == "2"


async def test_duplicate_event_answers_200_and_applies_once(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, offer, event = unique(), unique("uo"), unique("ev")
    query = params(user, offer, event, APPROVED, "7")
    duplicates = outcome_count("duplicate")
    for _ in range(3):
        assert await send(client, query) == OK
    assert await events_of(pool, event) == 1
    assert await balance(client, user) == "7"
    state = await offer_state(client, offer)
    assert (state["points_credited"], state["approvals"], state["event_count"]) == ("7", 1, 1)
    assert await log_outcomes(pool, offer) == ["credited", "duplicate", "duplicate"]
    assert outcome_count("duplicate") == duplicates + 2


async def test_late_retry_of_an_older_status_after_approved(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, offer = unique(), unique("uo")
    review, approval, pending = unique("ev"), unique("ev"), unique("ev")
    assert await send(client, params(user, offer, review, MANUAL_REVIEW)) == OK
    assert await send(client, params(user, offer, approval, APPROVED, "4.25")) == OK
    # AdGate's own retry of the review it already delivered, then an older status it sends late.
    assert await send(client, params(user, offer, review, MANUAL_REVIEW)) == OK
    assert await send(client, params(user, offer, pending, AWARD_PENDING)) == OK
    state = await offer_state(client, offer)
    assert (state["status"], state["points_credited"], state["event_count"]) == (
        APPROVED,
        "4.25",
        3,
    )
    assert [e["provider_ref"] for e in state["events"]] == [review, approval, pending]
    assert await balance(client, user) == "4.25"
    assert await log_outcomes(pool, offer) == [
        "status_changed",
        "credited",
        "duplicate",
        "ignored",
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"points": "70"},
        {"s1": "someone-else"},
        {"shm_status": REJECTED, "points": "7"},
        {"shm_upload_offer_id": "another-offer"},
    ],
    ids=["points", "user", "status", "offer"],
)
async def test_event_id_reused_with_other_values_is_a_conflict(
    client: Client, pool: asyncpg.Pool, change: dict[str, str]
) -> None:
    user, offer, event = unique(), unique("uo"), unique("ev")
    query = params(user, offer, event, APPROVED, "7")
    assert await send(client, query) == OK
    conflicts = outcome_count("conflict")
    assert await send(client, {**query, **change}) == OK
    log = await last_log(pool)
    assert (log["outcome"], log["http_status"]) == ("conflict", 200)
    assert outcome_count("conflict") == conflicts + 1
    assert await events_of(pool, event) == 1
    assert await balance(client, user) == "7"
    state = await offer_state(client, offer)
    assert (state["status"], state["points_credited"], state["event_count"]) == (APPROVED, "7", 1)


# --- the state of an approval: what it does to the money, per conversion ------------------------


async def offer_points(client: Client, offer: str) -> tuple[str, str]:
    state = await offer_state(client, offer)
    return state["status"], state["points_credited"]


async def test_approved_then_rejected_takes_the_points_back(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, offer, conv = unique(), unique("uo"), unique("conv")
    approved = params(user, offer, unique("ev"), APPROVED, "10.50", conversion_id=conv)
    assert await send(client, approved) == OK
    assert await balance(client, user) == "10.50"
    rejected = {**approved, "shm_event_id": unique("ev"), "state": "rejected"}
    assert await send(client, rejected) == OK
    assert await balance(client, user) == "0.00"
    assert await offer_points(client, offer) == (APPROVED, "0.00")
    assert await log_outcomes(pool, offer) == ["credited", "reversed"]
    # A second rejection, and an approval after it, move nothing more.
    assert await send(client, {**rejected, "shm_event_id": unique("ev")}) == OK
    assert await send(client, {**approved, "shm_event_id": unique("ev")}) == OK
    assert await balance(client, user) == "0.00"
    state = await offer_state(client, offer)
    assert (state["status"], state["points_credited"], state["approvals"]) == (
        APPROVED,
        "0.00",
        4,
    )
    assert [e["data"]["conversion_state"] for e in state["events"]] == [
        "approved",
        "rejected",
        "rejected",
        "approved",
    ]
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    wallet = await resp.json()
    assert (wallet["total_credited"], wallet["total_reversed"]) == ("10.50", "10.50")
    report = await run_verify(pool)
    assert report.ok, report.differences


async def test_pending_then_approved_credits_once(client: Client, pool: asyncpg.Pool) -> None:
    user, offer, conv = unique(), unique("uo"), unique("conv")
    pending = params(user, offer, unique("ev"), APPROVED, "4", conversion_id=conv, state="PENDING")
    assert await send(client, pending) == OK
    assert await balance(client, user) == "0"
    assert await offer_points(client, offer) == (APPROVED, "0")
    assert await send(client, {**pending, "shm_event_id": unique("ev"), "state": "approved"}) == OK
    assert await send(client, {**pending, "shm_event_id": unique("ev"), "state": "approved"}) == OK
    assert await balance(client, user) == "4"
    assert await offer_points(client, offer) == (APPROVED, "4")
    assert await log_outcomes(pool, offer) == ["status_changed", "credited", "status_changed"]
    assert (await run_verify(pool)).ok


async def test_rejected_before_approved_nets_zero(client: Client, pool: asyncpg.Pool) -> None:
    user, offer, conv = unique(), unique("uo"), unique("conv")
    rejected = params(
        user, offer, unique("ev"), APPROVED, "6", conversion_id=conv, state="rejected"
    )
    assert await send(client, rejected) == OK
    assert await send(client, {**rejected, "shm_event_id": unique("ev"), "state": "approved"}) == OK
    assert await balance(client, user) == "0"
    assert await offer_points(client, offer) == (APPROVED, "0")
    assert await log_outcomes(pool, offer) == ["status_changed", "status_changed"]
    assert (await run_verify(pool)).ok


async def test_two_approvals_of_one_conversion_credit_once(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, offer, conv = unique(), unique("uo"), unique("conv")
    for _ in range(2):
        query = params(user, offer, unique("ev"), APPROVED, "3", conversion_id=conv)
        assert await send(client, query) == OK
    assert await balance(client, user) == "3"
    state = await offer_state(client, offer)
    assert (state["points_credited"], state["approvals"]) == ("3", 2)
    assert await log_outcomes(pool, offer) == ["credited", "status_changed"]


async def test_one_conversion_across_offers_is_credited_once(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, conv = unique(), unique("conv")
    first, second = unique("uo"), unique("uo")
    for offer in (first, second):
        query = params(user, offer, unique("ev"), APPROVED, "2", conversion_id=conv)
        assert await send(client, query) == OK
    assert await balance(client, user) == "2"
    assert (await offer_points(client, first), await offer_points(client, second)) == (
        (APPROVED, "2"),
        (APPROVED, "0"),
    )
    assert (await run_verify(pool)).ok


async def test_an_approval_without_conversion_id_is_a_conversion_of_its_own(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, offer = unique(), unique("uo")
    for state in ("approved", "approved", "rejected"):
        query = params(user, offer, unique("ev"), APPROVED, "5", state=state)
        del query["conversion_id"]
        assert await send(client, query) == OK
    # Each is its own conversion: the rejection has nothing of its own to take back.
    assert await balance(client, user) == "10"
    assert await offer_points(client, offer) == (APPROVED, "10")
    assert await log_outcomes(pool, offer) == ["credited", "credited", "status_changed"]
    assert (await run_verify(pool)).ok


@pytest.mark.parametrize("state", ["paid", "reversed", "approved2"])
async def test_unknown_state_is_400_and_records_nothing(
    client: Client, pool: asyncpg.Pool, state: str
) -> None:
    user, offer, event = unique(), unique("uo"), unique("ev")
    status, body = await send(client, params(user, offer, event, APPROVED, "5", state=state))
    assert status == 400
    assert "state" in body and "approved, pending, rejected" in body
    assert await events_of(pool, event) == 0
    assert await balance(client, user) is None
    assert await log_outcomes(pool, offer) == ["invalid"]


async def test_state_of_another_status_is_kept_and_ignored(client: Client) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), MANUAL_REVIEW, state="odd")) == OK
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "1")) == OK
    events = (await offer_state(client, offer))["events"]
    assert events[0]["data"]["state"] == "odd" and "conversion_state" not in events[0]["data"]
    assert await balance(client, user) == "1"


async def test_a_conversion_of_another_user_is_a_conflict(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, other, conv = unique(), unique(), unique("conv")
    assert (
        await send(
            client, params(user, unique("uo"), unique("ev"), APPROVED, "8", conversion_id=conv)
        )
        == OK
    )
    offer, event = unique("uo"), unique("ev")
    query = params(other, offer, event, APPROVED, "8", conversion_id=conv, state="rejected")
    assert await send(client, query) == OK
    log = await last_log(pool)
    assert (log["outcome"], log["detail"]) == ("conflict", "the conversion belongs to another user")
    assert await events_of(pool, event) == 0
    assert (await balance(client, user), await balance(client, other)) == ("8", None)


def legacy_submission(
    user: str, offer: str, event: str, points: str, conv: str | None
) -> write.Submission:
    """An APPROVED event as the code before the `state` rule wrote it: no conversion_state."""
    data: Json = {"upload_offer_id": offer, "status": APPROVED, "upload_id": "", "offer_id": ""}
    if conv is not None:
        data["conversion_id"] = conv
    postback = Postback(
        provider=NAME,
        key=f"event:{event}",
        type=EventType.RECEIPT_STATUS_CHANGED,
        user_id=user,
        amount=Decimal(points),
        provider_ref=event,
        data=data,
    )
    log = write.LogEntry(
        request_id=unique("r"), provider=NAME, method="GET", client_ip=None, params={}
    )
    return write.Submission(log, adgate_receipts.answer, postback=postback)


async def test_a_legacy_log_keeps_its_credits_and_a_later_rejection_takes_them_back(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, offer, conv, lone = unique(), unique("uo"), unique("conv"), unique("ev")
    legacy = [
        legacy_submission(user, offer, unique("ev"), "10", conv),
        legacy_submission(user, offer, unique("ev"), "5", conv),
        legacy_submission(user, offer, lone, "2", None),
    ]
    for submission in legacy:
        (receipt,) = await write.append(pool, [submission])
        assert receipt.outcome == "credited"
    assert await balance(client, user) == "17"
    # The database as the code before the rule left it: no settlement of any receipt event.
    links = [f"conversion:{conv}", f"event:{lone}"]
    await pool.execute(
        "DELETE FROM settlements WHERE provider = $1 AND link = ANY($2::text[])", NAME, links
    )
    await pool.execute("DELETE FROM schema_upgrades WHERE name = 'receipt_conversions'")
    assert not (await run_verify(pool)).ok
    async with pool.acquire() as conn:
        await apply_schema(conn)
    rows = await pool.fetch(
        "SELECT link, credit_user, credited FROM settlements WHERE provider = $1"
        " AND link = ANY($2::text[]) ORDER BY link",
        NAME,
        links,
    )
    assert [(r["link"], r["credit_user"], r["credited"]) for r in rows] == [
        (f"conversion:{conv}", user, Decimal(15)),
        (f"event:{lone}", user, Decimal(2)),
    ]
    report = await run_verify(pool)
    assert report.ok, report.differences
    # Applied once: the schema again leaves the conversions as they are.
    async with pool.acquire() as conn:
        await apply_schema(conn)
    assert (await run_verify(pool)).ok

    query = params(user, offer, unique("ev"), APPROVED, "10", conversion_id=conv, state="rejected")
    assert await send(client, query) == OK
    assert await balance(client, user) == "2"
    assert await offer_points(client, offer) == (APPROVED, "2")
    assert await send(client, {**query, "shm_event_id": unique("ev"), "state": "approved"}) == OK
    assert await balance(client, user) == "2"
    report = await run_verify(pool)
    assert report.ok, report.differences


# --- refusals -----------------------------------------------------------------------------------


MALFORMED: list[tuple[str, str | None, dict[str, str]]] = [
    ("s1", "s1", {}),
    ("shm_event_id", "shm_event_id", {}),
    ("shm_upload_offer_id", "shm_upload_offer_id", {}),
    ("shm_status", "shm_status", {}),
    ("shm_status", None, {"shm_status": "PAID"}),
    ("shm_status", None, {"shm_status": ""}),
    ("points", "points", {}),
    ("points", None, {"points": ""}),
    ("points", None, {"points": "-5"}),
    ("points", None, {"points": "NaN"}),
    ("points", None, {"points": "1e999999"}),
    ("points", None, {"points": "abc"}),
    ("points", None, {"points": "1000000000000000"}),
    ("points", None, {"shm_status": MANUAL_REVIEW, "points": "Infinity"}),
]


@pytest.mark.parametrize(("named", "drop", "override"), MALFORMED)
async def test_malformed_postbacks_are_400_and_record_nothing(
    client: Client, pool: asyncpg.Pool, named: str, drop: str | None, override: dict[str, str]
) -> None:
    user, offer, event = unique(), unique("uo"), unique("ev")
    query = {**params(user, offer, event, APPROVED, "5"), **override}
    query.pop(drop or "", None)
    invalids = outcome_count("invalid")
    status, body = await send(client, query)
    assert status == 400, body
    assert named in body and "\n" not in body
    assert await events_of(pool, event) == 0
    log = await last_log(pool)
    assert (log["outcome"], log["http_status"], log["event_position"]) == ("invalid", 400, None)
    assert outcome_count("invalid") == invalids + 1
    assert await balance(client, user) is None
    assert (await offer_body(client, offer))[0] == 404


async def test_parameter_given_twice_is_400(client: Client, pool: asyncpg.Pool) -> None:
    user, event = unique(), unique("ev")
    query = "&".join(
        f"{k}={v}" for k, v in params(user, unique("uo"), event, APPROVED, "1").items()
    )
    resp = await client.post(f"/postbacks/{NAME}/{TOKEN}?{query}&POINTS=1000")
    assert resp.status == 400
    assert "more than once" in await resp.text()
    assert await events_of(pool, event) == 0


@pytest.mark.parametrize(
    "token",
    [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "x" * len(TOKEN), "%00" + TOKEN[3:], "ťoken" * 5],
    ids=["shorter", "longer", "case", "other", "nul", "non-ascii"],
)
async def test_wrong_token_is_403_and_records_nothing(
    client: Client, pool: asyncpg.Pool, token: str
) -> None:
    user, offer, event = unique(), unique("uo"), unique("ev")
    failures, rejected = auth_failures("token"), outcome_count("rejected")
    status, _ = await send(client, params(user, offer, event, APPROVED, "100"), token=token)
    assert status == 403
    assert await events_of(pool, event) == 0
    assert await balance(client, user) is None
    assert (await offer_body(client, offer))[0] == 404
    log = await last_log(pool)
    assert (log["outcome"], log["http_status"], log["event_position"]) == ("rejected", 403, None)
    assert log["params"]["shm_event_id"] == event
    assert TOKEN not in json.dumps(log["params"]) and TOKEN not in log["detail"]
    assert auth_failures("token") == failures + 1
    assert outcome_count("rejected") == rejected + 1


async def test_short_path_and_unknown_paths_are_404(client: Client, pool: asyncpg.Pool) -> None:
    user, offer, event = unique(), unique("uo"), unique("ev")
    query = params(user, offer, event, APPROVED, "1")
    for method in ("GET", "POST"):
        for path in (
            f"/postbacks/{NAME}",
            f"/postbacks/{NAME}/",
            f"/postbacks/{NAME}/{TOKEN}/extra",
            f"/postbacks/other/{TOKEN}",
        ):
            resp = await client.request(method, path, params=query)
            assert resp.status == 404, (method, path)
    assert await events_of(pool, event) == 0
    assert await balance(client, user) is None


async def test_get_on_the_token_path_is_recorded_too(client: Client) -> None:
    user, offer = unique(), unique("uo")
    resp = await client.get(
        f"/postbacks/{NAME}/{TOKEN}", params=params(user, offer, unique("ev"), APPROVED, "1.5")
    )
    assert (resp.status, await resp.text()) == OK
    assert await balance(client, user) == "1.5"


async def test_body_over_the_server_limit_is_413(aiohttp_client: Any, database_url: str) -> None:
    small = helpers.settings(
        database_url,
        providers=[{"name": NAME, "protocol": "adgate_receipts", "url_token": TOKEN}],
    )
    small_client: Client = await aiohttp_client(create_app(small))
    user, offer, event = unique(), unique("uo"), unique("ev")
    status, _ = await send(
        small_client, params(user, offer, event, APPROVED, "1"), body=b"x" * 5000
    )
    assert status == 413


# --- the receipt body ---------------------------------------------------------------------------


async def test_receipt_body_is_kept_with_the_event(client: Client, pool: asyncpg.Pool) -> None:
    user, offer, event = unique(), unique("uo"), unique("ev")
    receipt = {
        "images": ["https://img.adgate.example/r/1.jpg", "https://img.adgate.example/r/2.jpg"],
        "upload_id": 1001,
        "note": "Äpfel 🍎",
    }
    body = json.dumps(receipt, ensure_ascii=False).encode()
    assert await send(client, params(user, offer, event, APPROVED, "2"), body=body) == OK
    data = (await offer_state(client, offer))["events"][0]["data"]
    assert data["receipt"] == receipt
    stored = await pool.fetchval(
        "SELECT data->'receipt' FROM events WHERE provider = $1 AND provider_ref = $2", NAME, event
    )
    assert stored == receipt
    assert await balance(client, user) == "2"


BIG_RECEIPT = json.dumps({"images": ["https://img.example/" + "x" * 20_000]}).encode()


@pytest.mark.parametrize(
    ("body", "field", "expected"),
    [
        (BIG_RECEIPT, "receipt_omitted_bytes", len(BIG_RECEIPT)),
        (b"not json at all", "receipt_text", "not json at all"),
        (b'{"a": "\\u0000"}', "receipt_text", '{"a": "\\u0000"}'),
        (b'{"a": "\\ud800"}', "receipt_text", '{"a": "\\ud800"}'),
        (b"nul\x00byte", "receipt_text", "nulbyte"),
        (b"\xff\xfe", "receipt_text", "\ufffd\ufffd"),
        (b'{"big": 100000000000000000000000000000}', "receipt", {"big": 10**29}),
    ],
    ids=["too-large", "text", "nul-escape", "lone-surrogate", "nul-byte", "not-utf8", "big-int"],
)
async def test_awkward_receipt_bodies_are_kept_safely(
    client: Client, body: bytes, field: str, expected: Any
) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "1"), body=body) == OK
    data = (await offer_state(client, offer))["events"][0]["data"]
    assert data[field] == expected
    assert await balance(client, user) == "1"


# --- the source address -------------------------------------------------------------------------

ALLOWED = ("203.0.113.7", "198.51.100.0/24")
PROXIES = ("127.0.0.1/32", "10.0.0.0/8")


def forwarded(*headers: str) -> CIMultiDict[str]:
    return CIMultiDict(("X-Forwarded-For", h) for h in headers)


@pytest.mark.parametrize(
    ("headers", "expected", "client_ip"),
    [
        ((), 403, "127.0.0.1"),  # the peer itself is a proxy, and not allowed
        (("203.0.113.7",), 200, "203.0.113.7"),
        (("198.51.100.20, 10.1.1.1",), 200, "198.51.100.20"),
        (("198.51.100.20, 10.1.1.1, 10.2.2.2, 127.0.0.1",), 200, "198.51.100.20"),
        (("203.0.113.7, 6.6.6.6",), 403, "6.6.6.6"),  # the right-most untrusted hop decides
        (("6.6.6.6, 203.0.113.7",), 200, "203.0.113.7"),  # the left proves nothing
        (("6.6.6.6", "203.0.113.7"), 200, "203.0.113.7"),  # several headers are one list
        (("203.0.113.7", "6.6.6.6"), 403, "6.6.6.6"),
        (("203.0.113.7", "10.1.1.1"), 200, "203.0.113.7"),
        (("6.6.6.6, 203.0.113.7", "10.3.3.3, 10.4.4.4"), 200, "203.0.113.7"),
        (("10.1.1.1",), 403, "10.1.1.1"),  # only proxies: none of them is allowed
        (("::ffff:203.0.113.7",), 200, "203.0.113.7"),
        (("not-an-ip",), 403, None),
        (("203.0.113.7, not-an-ip",), 403, None),
    ],
)
async def test_allowed_ips_behind_trusted_proxies(
    aiohttp_client: Any,
    database_url: str,
    pool: asyncpg.Pool,
    headers: tuple[str, ...],
    expected: int,
    client_ip: str | None,
) -> None:
    allowlisted = adgate_settings(database_url, allowed_ips=ALLOWED, trusted_proxies=PROXIES)
    app_client: Client = await aiohttp_client(create_app(allowlisted))
    user, offer, event = unique(), unique("uo"), unique("ev")
    before = auth_failures("source_ip")
    status, _ = await send(
        app_client, params(user, offer, event, APPROVED, "3"), headers=forwarded(*headers)
    )
    assert status == expected
    assert await events_of(pool, event) == (1 if expected == 200 else 0)
    assert await balance(app_client, user) == ("3" if expected == 200 else None)
    log = await last_log(pool)
    assert log["client_ip"] == client_ip
    assert log["outcome"] == ("credited" if expected == 200 else "rejected")
    assert auth_failures("source_ip") == before + (1 if expected == 403 else 0)


async def test_allowed_peer_without_proxies(
    aiohttp_client: Any, database_url: str, pool: asyncpg.Pool
) -> None:
    direct = adgate_settings(database_url, allowed_ips=["127.0.0.1"])
    app_client: Client = await aiohttp_client(create_app(direct))
    user, offer = unique(), unique("uo")
    # The peer is the client; what it writes in X-Forwarded-For changes nothing.
    query = params(user, offer, unique("ev"), APPROVED, "1")
    assert await send(app_client, query, headers=forwarded("6.6.6.6")) == OK
    assert (await last_log(pool))["client_ip"] == "127.0.0.1"
    assert await balance(app_client, user) == "1"


@pytest.mark.parametrize("trusted", [(), ("10.0.0.0/8",)], ids=["no-proxies", "other-proxies"])
async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_403(
    aiohttp_client: Any, database_url: str, pool: asyncpg.Pool, trusted: tuple[str, ...]
) -> None:
    untrusted = adgate_settings(database_url, allowed_ips=["203.0.113.7"], trusted_proxies=trusted)
    app_client: Client = await aiohttp_client(create_app(untrusted))
    user, event = unique(), unique("ev")
    before = auth_failures("source_ip")
    status, _ = await send(
        app_client,
        params(user, unique("uo"), event, APPROVED, "9"),
        headers=forwarded("203.0.113.7"),
    )
    assert status == 403
    assert await events_of(pool, event) == 0
    assert (await last_log(pool))["client_ip"] == "127.0.0.1"
    assert auth_failures("source_ip") == before + 1


async def test_source_is_checked_before_the_token(
    aiohttp_client: Any, database_url: str, pool: asyncpg.Pool
) -> None:
    allowlisted = adgate_settings(database_url, allowed_ips=ALLOWED, trusted_proxies=PROXIES)
    app_client: Client = await aiohttp_client(create_app(allowlisted))
    source, token = auth_failures("source_ip"), auth_failures("token")
    query = params(unique(), unique("uo"), unique("ev"), APPROVED, "1")
    status, _ = await send(app_client, query, token="y" * 20, headers=forwarded("6.6.6.6"))
    assert status == 403
    assert (auth_failures("source_ip"), auth_failures("token")) == (source + 1, token)
    status, _ = await send(app_client, query, token="y" * 20, headers=forwarded("203.0.113.7"))
    assert status == 403
    assert (auth_failures("source_ip"), auth_failures("token")) == (source + 1, token + 1)
    assert await events_of(pool, query["shm_event_id"]) == 0


# --- the receipt-offer API ----------------------------------------------------------------------


async def test_unknown_receipt_offer_is_404(client: Client) -> None:
    status, body = await offer_body(client, unique("uo"))
    assert status == 404
    assert body["error"] == "receipt_offer_not_found" and body["detail"]


async def test_receipt_offer_of_another_provider_is_404(client: Client) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), MANUAL_REVIEW)) == OK
    assert (await offer_body(client, offer))[0] == 200
    assert (await offer_body(client, offer, provider="medioot"))[0] == 404


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-key", f"Basic {helpers.READ_KEY}"])
async def test_receipt_offer_needs_a_key(client: Client, authorization: str | None) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "1")) == OK
    headers = {"Authorization": authorization} if authorization else {}
    answers = []
    for path in (f"/v1/receipt-offers/{NAME}/{offer}", f"/v1/receipt-offers/{NAME}/{unique()}"):
        resp = await client.get(path, headers=headers)
        answers.append((resp.status, await resp.json()))
    # A known and an unknown offer answer alike: without a key nothing is revealed.
    assert answers[0] == answers[1]
    assert answers[0][0] == 401 and answers[0][1]["error"] == "unauthorized"


async def test_receipt_offer_needs_the_read_scope(client: Client) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "1")) == OK
    resp = await client.get(
        f"/v1/receipt-offers/{NAME}/{offer}",
        headers={"Authorization": f"Bearer {helpers.NO_SCOPE_KEY}"},
    )
    assert resp.status == 403


@pytest.mark.parametrize("offer", ["offer 1+ü&x=y", "a/b", "a%2Fb", "x?y#z", "9001"])
async def test_receipt_offer_ids_with_reserved_characters_round_trip(
    client: Client, offer: str
) -> None:
    offer = f"{offer}-{unique()}"
    user = unique()
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "1")) == OK
    resp = await client.get(f"/v1/receipt-offers/{NAME}/{quote(offer, safe='')}", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert (body["upload_offer_id"], body["user_id"], body["points_credited"]) == (offer, user, "1")


async def test_postback_log_api_shows_the_outcomes(client: Client) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "1")) == OK
    assert await send(client, params(user, offer, unique("ev"), REJECTED)) == OK
    resp = await client.get(
        "/v1/postbacks", params={"provider": NAME, "outcome": "ignored"}, headers=AUTH
    )
    assert resp.status == 200
    entries = [
        e
        for e in (await resp.json())["postbacks"]
        if e["params"].get("shm_upload_offer_id") == offer
    ]
    assert len(entries) == 1
    assert (entries[0]["provider"], entries[0]["outcome"], entries[0]["http_status"]) == (
        NAME,
        "ignored",
        200,
    )
    assert "APPROVED" in entries[0]["detail"]


async def test_logs_never_hold_the_url_token(client: Client, pool: asyncpg.Pool) -> None:
    query = params(unique(), unique("uo"), unique("ev"), APPROVED, "1")
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        assert await send(client, query) == OK
        assert (await send(client, query, token=TOKEN + "x"))[0] == 403
        assert (await client.get(f"/postbacks/{NAME}", params=query)).status == 404
    assert logs and all("request_id" in entry for entry in logs)
    assert TOKEN not in repr(logs)
    stored = await pool.fetch(
        "SELECT params::text AS p, detail FROM postback_log WHERE params->>'shm_event_id' = $1",
        query["shm_event_id"],
    )
    assert len(stored) == 2
    assert all(TOKEN not in r["p"] and TOKEN not in r["detail"] for r in stored)


async def test_two_walls_of_one_protocol_keep_their_offers_apart(
    aiohttp_client: Any, database_url: str, pool: asyncpg.Pool
) -> None:
    other_token = "second-app-token-abcdef"
    two = helpers.settings(
        database_url,
        providers=[
            {"name": NAME, "protocol": "adgate_receipts", "url_token": TOKEN},
            {"name": "adgate-b", "protocol": "adgate_receipts", "url_token": other_token},
        ],
    )
    app_client: Client = await aiohttp_client(create_app(two))
    user, offer, event = unique(), unique("uo"), unique("ev")
    # The same upload offer and event ids on two walls are two offers and two events.
    assert await send(app_client, params(user, offer, event, APPROVED, "2")) == OK
    resp = await app_client.post(
        f"/postbacks/adgate-b/{other_token}", params=params(user, offer, event, REJECTED)
    )
    assert (resp.status, await resp.text()) == OK
    # Each wall's token opens only its own endpoint.
    resp = await app_client.post(
        f"/postbacks/adgate-b/{TOKEN}", params=params(user, offer, event, APPROVED, "1")
    )
    assert resp.status == 403
    assert (await offer_state(app_client, offer))["status"] == APPROVED
    status, other = await offer_body(app_client, offer, provider="adgate-b")
    assert status == 200
    assert (other["status"], other["points_credited"]) == (REJECTED, "0")
    assert await balance(app_client, user) == "2"
    assert (await run_verify(pool)).ok


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_approval", [True, False], ids=["approved", "never-approved"])
@pytest.mark.parametrize("round_", range(4))
async def test_concurrent_events_of_one_offer_end_in_a_consistent_state(
    client: Client, pool: asyncpg.Pool, with_approval: bool, round_: int
) -> None:
    user, offer = unique(), unique("uo")
    specs: list[tuple[str, str | None]] = [
        (MANUAL_REVIEW, None),
        (AWARD_PENDING, None),
        (REJECTED, None),
        (MANUAL_REVIEW, None),
        (AWARD_PENDING, "1"),
    ]
    if with_approval:
        specs += [(APPROVED, "5"), (APPROVED, "2.25"), (APPROVED, "0")]
    queries = [params(user, offer, unique("ev"), s, p) for s, p in specs]
    copies = [q for q in queries for _ in range(3)]
    random.Random(round_).shuffle(copies)

    answers = await asyncio.gather(*(send(client, q) for q in copies))
    assert set(answers) == {OK}

    state = await offer_state(client, offer)
    events = state["events"]
    assert sorted(e["provider_ref"] for e in events) == sorted(q["shm_event_id"] for q in queries)
    # The projection is the replay of its own history: consistent with the order it records.
    replayed, outcomes = receipt_offers.ReceiptOffer(), []
    links: settlement.Links = {}
    for event in events:
        postback = as_postback(event)
        movement = settlement.move(links, postback)
        replayed, outcome = receipt_offers.apply(replayed, postback, movement)
        outcomes.append(outcome)
    assert (state["status"], Decimal(state["points_credited"]), state["event_count"]) == (
        replayed.status,
        replayed.points_credited,
        len(queries),
    )
    if with_approval:
        assert (state["status"], state["points_credited"], state["approvals"]) == (
            APPROVED,
            "7.25",
            3,
        )
        assert await balance(client, user) == "7.25"
    else:
        assert state["status"] == events[-1]["data"]["status"]
        assert (state["points_credited"], state["approvals"]) == ("0", 0)
        assert await balance(client, user) == "0"

    logged = await log_outcomes(pool, offer)
    assert logged.count("duplicate") == 2 * len(queries)
    assert sorted(o for o in logged if o != "duplicate") == sorted(o.value for o in outcomes)
    assert (await run_verify(pool)).ok


async def test_concurrent_offers_of_one_user_all_count(client: Client, pool: asyncpg.Pool) -> None:
    user = unique()
    offers = [unique("uo") for _ in range(10)]
    queries = [
        params(user, offer, unique("ev"), status, "1.1" if status == APPROVED else None)
        for offer in offers
        for status in (MANUAL_REVIEW, APPROVED, REJECTED)
    ]
    answers = await asyncio.gather(*(send(client, q) for q in queries))
    assert set(answers) == {OK}
    assert await balance(client, user) == "11.0"
    for offer in offers:
        state = await offer_state(client, offer)
        assert (state["status"], state["points_credited"]) == (APPROVED, "1.1")
    assert (await run_verify(pool)).ok


# --- the database down ---------------------------------------------------------------------------


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[tuple[DatabaseProxy, str]]:
    db_proxy = DatabaseProxy(database_url)
    dsn = await db_proxy.start()
    try:
        yield db_proxy, dsn
    finally:
        await db_proxy.close()


async def test_database_down_is_503_and_the_retry_records_once(
    aiohttp_client: Any, proxy: tuple[DatabaseProxy, str], pool: asyncpg.Pool
) -> None:
    db_proxy, dsn = proxy
    proxied: Client = await aiohttp_client(create_app(adgate_settings(dsn, timeout=1.0)))
    user, offer, event = unique(), unique("uo"), unique("ev")
    query = params(user, offer, event, APPROVED, "6")
    db_proxy.cut()
    status, body = await send(proxied, query)
    assert status == 503 and body != "OK"
    assert await events_of(pool, event) == 0
    db_proxy.restore()
    assert await send(proxied, query) == OK
    assert await send(proxied, query) == OK
    assert await events_of(pool, event) == 1
    assert await balance(proxied, user) == "6"


# --- verify ------------------------------------------------------------------------------------


async def test_verify_is_ok_after_all_of_it(client: Client, pool: asyncpg.Pool) -> None:
    # Runs after the tests above in this module's database, so it replays everything they wrote.
    user, offer = unique(), unique("uo")
    for status, points in [(MANUAL_REVIEW, None), (APPROVED, "1.5"), (REJECTED, None)]:
        assert await send(client, params(user, offer, unique("ev"), status, points)) == OK
    report = await run_verify(pool)
    assert report.ok, report.differences
    assert report.offers >= 1 and report.events >= 3
    assert report.summary().startswith("verify: ok")


@pytest.mark.parametrize(
    ("change", "undo", "field"),
    [
        (
            "UPDATE receipt_offers SET points_credited = points_credited + 1"
            " WHERE provider = $1 AND upload_offer_id = $2",
            "UPDATE receipt_offers SET points_credited = points_credited - 1"
            " WHERE provider = $1 AND upload_offer_id = $2",
            "points_credited",
        ),
        (
            "UPDATE receipt_offers SET status = 'REJECTED'"
            " WHERE provider = $1 AND upload_offer_id = $2",
            "UPDATE receipt_offers SET status = 'APPROVED'"
            " WHERE provider = $1 AND upload_offer_id = $2",
            "status",
        ),
        (
            "UPDATE receipt_offers SET approvals = approvals + 2, event_count = event_count - 1"
            " WHERE provider = $1 AND upload_offer_id = $2",
            "UPDATE receipt_offers SET approvals = approvals - 2, event_count = event_count + 1"
            " WHERE provider = $1 AND upload_offer_id = $2",
            "approvals",
        ),
    ],
    ids=["points", "status", "approvals"],
)
async def test_verify_reports_a_tampered_receipt_offer(
    client: Client, pool: asyncpg.Pool, change: str, undo: str, field: str
) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), APPROVED, "2")) == OK
    assert (await run_verify(pool)).ok
    await pool.execute(change, NAME, offer)
    try:
        report = await run_verify(pool)
        assert not report.ok
        naming = [line for line in report.differences if repr(offer) in line]
        assert naming and all(NAME in line for line in naming)
        assert any(f": {field} is " in line for line in naming)
        assert report.summary().startswith("verify: FAILED")
    finally:
        await pool.execute(undo, NAME, offer)
    assert (await run_verify(pool)).ok


async def test_verify_reports_a_deleted_receipt_offer(client: Client, pool: asyncpg.Pool) -> None:
    user, offer = unique(), unique("uo")
    assert await send(client, params(user, offer, unique("ev"), MANUAL_REVIEW)) == OK
    row = await pool.fetchrow(
        "DELETE FROM receipt_offers WHERE provider = $1 AND upload_offer_id = $2 RETURNING *",
        NAME,
        offer,
    )
    try:
        report = await run_verify(pool)
        assert any(repr(offer) in line and "missing" in line for line in report.differences)
    finally:
        await pool.execute(
            "INSERT INTO receipt_offers"
            " SELECT * FROM json_populate_record(NULL::receipt_offers, $1)",
            json.dumps({k: str(v) for k, v in dict(row).items()}),
        )
    assert (await run_verify(pool)).ok
