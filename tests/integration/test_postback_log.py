"""The postback log through HTTP against real PostgreSQL: every postback, accepted or refused,
names its user and transaction and why its authentication failed; GET /v1/postbacks finds them
by user, transaction, time, provider and outcome, newest first, a page at a time."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.settings import Settings
from tests import helpers
from tests.helpers import AUTH, MEDIOOT_SECRET, md5, medioot, unique

Client = TestClient[web.Request, web.Application]
Json = dict[str, Any]

INBRAIN_SECRET = "test-inbrain-secret"
ADGATE_TOKEN = "adgate-url-token_0123456789"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return helpers.settings(
        database_url,
        providers=[
            {"name": "medioot", "protocol": "medioot", "secret": MEDIOOT_SECRET},
            # The test client comes from 127.0.0.1: never allowed here.
            {
                "name": "fenced",
                "protocol": "medioot",
                "secret": MEDIOOT_SECRET,
                "allowed_ips": ["203.0.113.7"],
            },
            {"name": "inbrain", "protocol": "inbrain", "secret": INBRAIN_SECRET},
            {"name": "adgate", "protocol": "adgate_receipts", "url_token": ADGATE_TOKEN},
        ],
    )


# --- helpers ------------------------------------------------------------------------------------


async def send(
    client: Client, params: dict[str, str], provider: str = "medioot"
) -> tuple[int, str]:
    resp = await client.get(f"/postbacks/{provider}", params=params)
    return resp.status, await resp.text()


async def page(client: Client, status: int = 200, **params: str) -> Json:
    resp = await client.get("/v1/postbacks", headers=AUTH, params=params)
    body = await resp.json(content_type=None)
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    assert isinstance(body, dict)
    return body


async def entries(client: Client, **params: str) -> list[Json]:
    body = await page(client, limit="1000", **params)
    assert body["next"] is None
    found: list[Json] = body["postbacks"]
    return found


def summary(found: list[Json]) -> list[tuple[Any, ...]]:
    return [
        (e["provider"], e["outcome"], e["http_status"], e["reason"], e["user_id"], e["transaction"])
        for e in found
    ]


def assert_newest_first(found: list[Json]) -> None:
    keys = [(dt.datetime.fromisoformat(e["received_at"]), e["id"]) for e in found]
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == len(keys)


def digits() -> str:
    return str(random.randrange(10**11, 10**12))


# --- who and what each postback named -----------------------------------------------------------


async def test_every_postback_of_a_user_accepted_or_refused_newest_first(client: Client) -> None:
    user, other = unique("u"), unique("u")
    credit = medioot(user, unique("t"), "5")
    assert await send(client, credit) == (200, "OK")
    assert await send(client, credit) == (200, "DUP")
    forged = medioot(user, unique("t"), "5", secret="not-the-secret")
    assert (await send(client, forged))[0] == 403
    fenced = medioot(user, unique("t"), "5")
    assert (await send(client, fenced, "fenced"))[0] == 403
    malformed = medioot(user, unique("t"), "five")
    assert (await send(client, malformed))[0] == 400
    # A genuine postback, then its signature over the same characters cut elsewhere.
    transid = digits()
    signature = md5(user + transid + "2.50" + MEDIOOT_SECRET)
    genuine = {"subid": user, "transid": transid, "reward": "2.50", "status": "1"}
    assert await send(client, {**genuine, "signature": signature}) == (200, "OK")
    shifted = {**genuine, "transid": transid[:4], "reward": transid[4:] + "2.50"}
    status, text = await send(client, {**shifted, "signature": signature})
    assert status == 403 and "signature already used" in text
    assert await send(client, medioot(other, unique("t"), "1")) == (200, "OK")

    found = await entries(client, user=user)
    assert summary(found) == [
        ("medioot", "rejected", 403, "replay", user, transid[:4]),
        ("medioot", "credited", 200, None, user, transid),
        ("medioot", "invalid", 400, None, user, malformed["transid"]),
        ("fenced", "rejected", 403, "source_ip", user, fenced["transid"]),
        ("medioot", "rejected", 403, "signature", user, forged["transid"]),
        ("medioot", "duplicate", 200, None, user, credit["transid"]),
        ("medioot", "credited", 200, None, user, credit["transid"]),
    ]
    assert_newest_first(found)
    assert [e["params"]["reward"] for e in found] == [
        shifted["reward"],
        "2.50",
        "five",
        "5",
        "5",
        "5",
        "5",
    ]
    refused = [e for e in found if e["outcome"] in {"rejected", "invalid"}]
    assert len(refused) == 4 and all(e["event_position"] is None for e in refused)
    assert all(isinstance(e["event_position"], int) for e in found if e["outcome"] == "credited")
    # Each filter narrows the same rows.
    assert summary(await entries(client, user=user, outcome="rejected")) == [
        summary(found)[i] for i in (0, 3, 4)
    ]
    assert summary(await entries(client, user=user, provider="fenced")) == [summary(found)[3]]
    assert [e["user_id"] for e in await entries(client, user=other)] == [other]
    assert await entries(client, user=user + "x") == []


async def test_a_transaction_shows_its_credit_duplicate_and_reversal(client: Client) -> None:
    user, transid = unique("u"), unique("t")
    assert await send(client, medioot(user, transid, "3")) == (200, "OK")
    assert await send(client, medioot(user, transid, "3")) == (200, "DUP")
    assert await send(client, medioot(user, transid, "3", status="2")) == (200, "OK")
    assert await send(client, medioot(user, unique("t"), "3")) == (200, "OK")
    found = await entries(client, transaction=transid)
    assert summary(found) == [
        ("medioot", "reversed", 200, None, user, transid),
        ("medioot", "duplicate", 200, None, user, transid),
        ("medioot", "credited", 200, None, user, transid),
    ]
    assert_newest_first(found)
    assert summary(await entries(client, transaction=transid, outcome="reversed")) == [
        summary(found)[0]
    ]
    assert await entries(client, transaction=transid, provider="fenced") == []


def inbrain(panelist: str, reward_id: str, secret: str = INBRAIN_SECRET) -> bytes:
    sig = hashlib.md5((panelist + reward_id + secret).encode()).hexdigest()
    fields = {
        "Sig": sig,
        "PanelistId": panelist,
        "RewardId": reward_id,
        "Reward": 10,
        "RewardType": "offer_completed",
    }
    return json.dumps(fields).encode()


async def test_inbrain_names_its_panelist_and_reward_id_accepted_or_refused(
    client: Client,
) -> None:
    panelist, good, bad = unique("p"), unique("r"), unique("r")
    headers = {"Content-Type": "application/json"}
    resp = await client.post("/postbacks/inbrain", data=inbrain(panelist, good), headers=headers)
    assert resp.status == 200
    forged = inbrain(panelist, bad, secret="wrong")
    resp = await client.post("/postbacks/inbrain", data=forged, headers=headers)
    assert resp.status == 403
    assert summary(await entries(client, user=panelist)) == [
        ("inbrain", "rejected", 403, "signature", panelist, bad),
        ("inbrain", "credited", 200, None, panelist, good),
    ]
    (entry,) = await entries(client, transaction=bad)
    assert "Sig" not in entry["params"] and entry["params"]["PanelistId"] == panelist


def adgate(user: str, event: str) -> dict[str, str]:
    return {
        "s1": user,
        "shm_event_id": event,
        "shm_upload_offer_id": unique("uo"),
        "shm_status": "APPROVED",
        "points": "12",
    }


async def test_adgate_names_its_user_and_event_accepted_or_refused(client: Client) -> None:
    user, good, bad = unique("u"), unique("ev"), unique("ev")
    resp = await client.post(f"/postbacks/adgate/{ADGATE_TOKEN}", params=adgate(user, good))
    assert resp.status == 200, await resp.text()
    resp = await client.post("/postbacks/adgate/not-the-token", params=adgate(user, bad))
    assert resp.status == 403
    found = await entries(client, user=user)
    assert [(e["outcome"], e["reason"], e["user_id"], e["transaction"]) for e in found] == [
        ("rejected", "token", user, bad),
        (found[1]["outcome"], None, user, good),
    ]
    assert found[1]["outcome"] not in {"rejected", "invalid"}
    assert ADGATE_TOKEN not in json.dumps(found)


# --- time windows and pages ---------------------------------------------------------------------

INSERT = """
INSERT INTO postback_log (received_at, request_id, provider, outcome, http_status, method,
                          user_id, transaction)
SELECT t, 'req', p, o, 200, 'GET', u, tr
FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[])
     AS x(t, p, o, u, tr)
RETURNING id, received_at
"""


async def insert(pool: asyncpg.Pool, rows: list[tuple[dt.datetime, str, str, str]]) -> list[int]:
    """Rows (received_at, provider, outcome, user) written directly, as one batch of the write
    path would (rows of one batch share their received_at); their ids, in order."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    result = await pool.fetch(INSERT, *columns, [unique("tx") for _ in rows])
    return [r["id"] for r in result]


def epoch() -> dt.datetime:
    """A minute of its own, weeks in the past, for one test's rows: within the log's retention
    (the service's upkeep deletes older rows), and before every row written now."""
    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(days=60)
    return start + dt.timedelta(minutes=random.randrange(30 * 24 * 60))


async def test_since_is_inclusive_until_exclusive_with_any_offset(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, t0 = unique("u"), epoch()
    times = [t0 + dt.timedelta(seconds=10 * k) for k in range(10)]
    ids = await insert(
        pool,
        [
            (t, ("medioot", "inbrain")[k % 2], ("credited", "rejected")[k % 3 == 0], user)
            for k, t in enumerate(times)
        ],
    )
    since = times[3].strftime("%Y-%m-%dT%H:%M:%SZ")
    until = (times[7] + dt.timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"

    async def window(**params: str) -> list[int]:
        return [e["id"] for e in await entries(client, since=since, until=until, **params)]

    assert await window() == [ids[6], ids[5], ids[4], ids[3]]  # no other test's rows then
    assert await window(user=user) == [ids[6], ids[5], ids[4], ids[3]]
    assert await window(provider="inbrain") == [ids[5], ids[3]]
    assert await window(outcome="rejected") == [ids[6], ids[3]]
    assert await window(user=user, provider="medioot", outcome="credited") == [ids[4]]
    assert await window(user=unique("u")) == []
    tail = [e["id"] for e in await entries(client, user=user, since=since)]
    assert tail == ids[3:][::-1]
    head = [e["id"] for e in await entries(client, user=user, until=until)]
    assert head == ids[:7][::-1]
    # The same instant in another offset is the same bound.
    plus_two = (times[3] + dt.timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"
    assert [e["id"] for e in await entries(client, user=user, since=plus_two)] == tail
    micro = (times[3] - dt.timedelta(microseconds=1)).isoformat()
    assert [e["id"] for e in await entries(client, user=user, since=micro)] == tail


async def walk(client: Client, limit: int, **params: str) -> list[int]:
    """Every page, following `next`; the ids in the order read."""
    seen: list[int] = []
    before: dict[str, str] = {}
    for _ in range(1000):
        body = await page(client, limit=str(limit), **params, **before)
        assert len(body["postbacks"]) <= limit
        seen += [e["id"] for e in body["postbacks"]]
        if body["next"] is None:
            return seen
        assert len(body["postbacks"]) == limit
        before = {"before": body["next"]}
    raise AssertionError("no last page")


async def test_pages_read_every_row_once_in_order_across_shared_times(
    client: Client, pool: asyncpg.Pool
) -> None:
    user, t0 = unique("u"), epoch()
    # 7 batches of 1 to 7 rows, each batch one time; inserted out of time order, so that the
    # ids do not follow the times.
    rows: list[tuple[dt.datetime, str, str, str]] = []
    for batch in (3, 0, 6, 1, 5, 2, 4):
        at = t0 + dt.timedelta(seconds=batch)
        rows += [(at, "medioot", "credited", user)] * (batch + 1)
    ids = await insert(pool, rows)
    expected = [i for _, i in sorted(zip([r[0] for r in rows], ids, strict=True), reverse=True)]
    assert len(expected) == 28
    for limit in (1, 2, 3, 4, 5, 7, 27, 28, 29):
        assert await walk(client, limit, user=user) == expected, limit
    end = (t0 + dt.timedelta(minutes=1)).isoformat()
    assert await walk(client, 4, since=t0.isoformat(), until=end) == expected
    assert await walk(client, 3, user=user, provider="medioot") == expected
    # A postback's id as the cursor: the rows after it in that order.
    for k in (0, 5, 13, 27):
        body = await page(client, user=user, before=str(expected[k]), limit="1000")
        assert [e["id"] for e in body["postbacks"]] == expected[k + 1 :]
        old = base64.urlsafe_b64encode(f"p{expected[k]}".encode()).decode().rstrip("=")
        body = await page(client, user=user, before=old, limit="1000")
        assert [e["id"] for e in body["postbacks"]] == expected[k + 1 :]
    # An id that is no postback: nothing before it (not the whole log).
    body = await page(client, user=user, before="999999999999", limit="1000")
    assert body["postbacks"] == []


async def test_one_postback_by_its_id(client: Client) -> None:
    user = unique("u")
    assert await send(client, medioot(user, unique("t"), "2")) == (200, "OK")
    (entry,) = await entries(client, user=user)
    resp = await client.get(f"/v1/postbacks/{entry['id']}", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == entry


# --- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"since": "2026-11-29T08:00:00"}, "invalid_since"),
        ({"since": "yesterday"}, "invalid_since"),
        ({"since": "2026-13-01T00:00:00Z"}, "invalid_since"),
        ({"until": "2026-11-29T08:00:00"}, "invalid_until"),
        ({"until": "2026-11-29T08:00:00Z" + "0" * 40}, "invalid_until"),
        ({"since": "2026-11-29T08:00:00Z", "until": "2026-11-29T08:00:00Z"}, "invalid_until"),
        ({"since": "2026-11-29T08:00:00Z", "until": "2026-11-29T09:00:00+02:00"}, "invalid_until"),
        ({"user": "u" * 256}, "invalid_user"),
        ({"transaction": "t\x00x"}, "invalid_transaction"),
        ({"provider": "p" * 256}, "invalid_provider"),
        ({"before": "not-a-cursor"}, "invalid_cursor"),
        ({"before": "99999999999999999999"}, "invalid_cursor"),
        ({"before": base64.urlsafe_b64encode(b"t99999999999999999.1").decode()}, "invalid_cursor"),
        ({"outcome": "refused"}, "invalid_outcome"),
        ({"outcome": "REJECTED"}, "invalid_outcome"),
    ],
)
async def test_bad_filters_answer_400_naming_the_parameter(
    client: Client, params: dict[str, str], error: str
) -> None:
    body = await page(client, 400, **params)
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    assert body["detail"]


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("0001-01-01T00:00:00+02:00", 400),  # before year 1 in UTC
        ("9999-12-31T23:59:59-02:00", 400),  # after year 9999 in UTC
        ("0001-01-01T00:00:00Z", 200),
        ("9999-12-31T23:59:59+02:00", 200),
    ],
)
async def test_times_at_the_ends_of_the_calendar(client: Client, text: str, status: int) -> None:
    body = await page(client, status, since=text)
    if status == 400:
        assert body["error"] == "invalid_since"


@pytest.mark.parametrize("postback_id", ["abc", "999999999", "-1", "1.5", "9" * 19, "9" * 40])
async def test_an_unknown_postback_is_404(client: Client, postback_id: str) -> None:
    resp = await client.get(f"/v1/postbacks/{postback_id}", headers=AUTH)
    body = await resp.json()
    assert resp.status == 404, body
    assert body["error"] == "postback_not_found"
