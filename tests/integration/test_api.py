"""The internal API, the probes and the request id, through HTTP."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from service.web.catalogue import OPERATIONS
from service.web.openapi import Operation
from tests.helpers import (
    AUTH,
    MEDIOOT_SECRET,
    NO_SCOPE_KEY,
    READ_KEY,
    SPEND_AUTH,
    medioot,
    unique,
)

Client = TestClient[web.Request, web.Application]
Json = dict[str, Any]

ROUTES = ("/v1/wallets/{user}", "/v1/wallets/{user}/events", "/v1/postbacks")
BAD_LIMITS = ("0", "-1", "abc", "1001", "99999999999999999999", "1.5", "²", "00000000001000000")
BAD_CURSORS = (
    "abc",
    "!!!",
    "p1",
    "-1",
    "²",
    "99999999999999999999",
    "9223372036854775808",
    "cDk5OTk5OTk5OTk5OTk5OTk5OTk5OTk",  # an encoded 20-digit position
    "eDE",  # an encoded "x1": the right shape of a cursor, the wrong content
)


# --- helpers ------------------------------------------------------------------------------------


async def credit(client: Client, user: str, reward: str, **extra: str) -> str:
    """Credit `reward` to `user` through the Medioot endpoint; the transaction id."""
    transid = unique("t")
    resp = await client.get("/postbacks/medioot", params=medioot(user, transid, reward, **extra))
    assert (resp.status, await resp.text()) == (200, "OK")
    return transid


async def reverse(client: Client, user: str, transid: str, reward: str) -> None:
    resp = await client.get("/postbacks/medioot", params=medioot(user, transid, reward, status="2"))
    assert (resp.status, await resp.text()) == (200, "OK")


async def get_json(
    client: Client, path: str, status: int = 200, params: Mapping[str, str] | None = None
) -> Json:
    resp = await client.get(path, headers=AUTH, params=params)
    body = await resp.json(content_type=None)
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    assert isinstance(body, dict)
    return body


def assert_error(body: Any) -> None:
    assert isinstance(body, dict)
    assert set(body) == {"error", "detail"}
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["detail"], str) and body["detail"]


async def events_page(client: Client, user: str, status: int = 200, **params: str) -> Json:
    return await get_json(client, f"/v1/wallets/{user}/events", status, params)


async def all_events(client: Client, user: str) -> list[Json]:
    page = await events_page(client, user, limit="1000")
    assert page["next"] is None
    events: list[Json] = page["events"]
    return events


def parse_time(text: Any) -> dt.datetime:
    assert isinstance(text, str)
    value = dt.datetime.fromisoformat(text)
    assert value.tzinfo is not None, f"{text} has no time zone"
    return value


async def metric_samples(client: Client) -> list[tuple[str, dict[str, str], float]]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def sample(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


# --- authentication -----------------------------------------------------------------------------


def route_path(template: str) -> str:
    return template.format(user=unique())


@pytest.mark.parametrize("template", ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        f"Basic {READ_KEY}",
        f"Token {READ_KEY}",
        READ_KEY,
        "Bearer",
        "Bearer ",
        "Bearer not-a-key-at-all",
        f"Bearer {READ_KEY}x",
        f"Bearer {READ_KEY[:-1]}",
    ],
    ids=[
        "absent",
        "empty",
        "basic",
        "token",
        "bare-key",
        "bearer-alone",
        "bearer-empty",
        "unknown",
        "key-longer",
        "key-shorter",
    ],
)
async def test_v1_routes_answer_401_without_a_valid_key(
    client: Client, template: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await client.get(route_path(template), headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/json"
    assert resp.headers.get("WWW-Authenticate", "").lower().startswith("bearer")
    assert_error(await resp.json())


@pytest.mark.parametrize("template", ROUTES)
async def test_v1_routes_answer_403_to_a_key_without_the_scope(
    client: Client, template: str
) -> None:
    resp = await client.get(
        route_path(template), headers={"Authorization": f"Bearer {NO_SCOPE_KEY}"}
    )
    assert resp.status == 403
    assert resp.content_type == "application/json"
    assert_error(await resp.json())


@pytest.mark.parametrize("template", ROUTES)
async def test_v1_routes_accept_the_read_key_with_any_case_of_scheme(
    client: Client, template: str
) -> None:
    user = unique()
    await credit(client, user, "1")
    path = template.format(user=user)
    for scheme in ("Bearer", "bearer", "BEARER"):
        resp = await client.get(path, headers={"Authorization": f"{scheme} {READ_KEY}"})
        assert resp.status == 200, (scheme, await resp.text())


async def test_unauthenticated_probes_need_no_key(client: Client) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        resp = await client.get(path)
        assert resp.status == 200, path


# --- wallets ------------------------------------------------------------------------------------


async def test_wallet_sums_credits_and_reversals_exactly(client: Client) -> None:
    user = unique()
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    transids = [await credit(client, user, "0.1") for _ in range(3)]
    body = await get_json(client, f"/v1/wallets/{user}")
    assert body["balance"] == "0.3"
    assert body["total_credited"] == "0.3"

    await reverse(client, user, transids[0], "0.1")
    body = await get_json(client, f"/v1/wallets/{user}")
    assert set(body) >= {
        "user_id",
        "balance",
        "total_credited",
        "total_reversed",
        "event_count",
        "updated_at",
    }
    assert body["user_id"] == user
    assert body["balance"] == "0.2"
    assert body["total_credited"] == "0.3"
    assert body["total_reversed"] == "0.1"
    assert body["event_count"] == 4
    assert isinstance(body["event_count"], int)
    updated = parse_time(body["updated_at"])
    assert started <= updated <= dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    events = await all_events(client, user)
    assert updated >= max(parse_time(e["recorded_at"]) for e in events)


async def test_wallet_amounts_are_strings_that_keep_the_scale_sent(client: Client) -> None:
    user = unique()
    await credit(client, user, "10.50")
    await credit(client, user, "0.25")
    body = await get_json(client, f"/v1/wallets/{user}")
    for name in ("balance", "total_credited", "total_reversed"):
        assert isinstance(body[name], str), name
    assert body["balance"] == "10.75"
    assert body["total_credited"] == "10.75"
    assert body["total_reversed"] == "0"


async def test_wallet_fully_reversed_reads_zero(client: Client) -> None:
    user = unique()
    transid = await credit(client, user, "7.5")
    await reverse(client, user, transid, "7.5")
    body = await get_json(client, f"/v1/wallets/{user}")
    assert body["balance"] in ("0", "0.0")
    assert body["total_credited"] == "7.5"
    assert body["total_reversed"] == "7.5"
    assert body["event_count"] == 2


async def test_an_amount_of_35_significant_digits_is_not_rounded(client: Client) -> None:
    user = unique()
    amount = "999999999999999.99999999999999999999"  # the largest amount allowed
    await credit(client, user, amount)
    (event,) = await all_events(client, user)
    assert event["amount"] == amount
    body = await get_json(client, f"/v1/wallets/{user}")
    assert (body["balance"], body["total_credited"]) == (amount, amount)


async def test_large_and_fine_amounts_add_up_exactly(client: Client) -> None:
    user = unique()
    await credit(client, user, "999999999999999.99999999999999999999")
    await credit(client, user, "0.00000000000000000001")
    body = await get_json(client, f"/v1/wallets/{user}")
    assert body["balance"] == "1000000000000000.00000000000000000000"


async def test_unknown_wallet_is_404_wallet_not_found(client: Client) -> None:
    body = await get_json(client, f"/v1/wallets/{unique()}", status=404)
    assert_error(body)
    assert body["error"] == "wallet_not_found"


async def test_user_ids_with_reserved_characters_round_trip(client: Client) -> None:
    user = f"{unique()} é/ü?&#"
    await credit(client, user, "3")
    body = await get_json(client, f"/v1/wallets/{quote(user, safe='')}")
    assert body["user_id"] == user
    assert body["balance"] == "3"


# --- wallet events ------------------------------------------------------------------------------


async def test_wallet_events_are_oldest_first_with_contract_fields(client: Client) -> None:
    user = unique()
    first = await credit(client, user, "10.50", uuid="click-1", offer_name="Play a game")
    second = await credit(client, user, "2")
    await reverse(client, user, first, "10.50")
    events = await all_events(client, user)

    assert [(e["type"], e["provider_ref"], e["amount"]) for e in events] == [
        ("credited", first, "10.50"),
        ("credited", second, "2"),
        ("reversed", first, "10.50"),
    ]
    positions = [e["position"] for e in events]
    assert all(isinstance(p, int) for p in positions)
    assert positions == sorted(positions) and len(set(positions)) == 3
    times = [parse_time(e["recorded_at"]) for e in events]
    assert times == sorted(times)
    for event in events:
        assert set(event) >= {
            "position",
            "type",
            "provider",
            "provider_ref",
            "amount",
            "recorded_at",
            "data",
        }
        assert event["provider"] == "medioot"
        assert isinstance(event["data"], dict)
    assert events[0]["data"].get("uuid") == "click-1"
    assert events[0]["data"].get("offer_name") == "Play a game"


async def test_wallet_events_of_another_user_are_not_shown(client: Client) -> None:
    mine, theirs = unique(), unique()
    await credit(client, mine, "1")
    await credit(client, theirs, "2")
    await credit(client, mine, "3")
    assert [e["amount"] for e in await all_events(client, mine)] == ["1", "3"]


async def test_wallet_events_of_an_unknown_user_are_empty_or_404(client: Client) -> None:
    resp = await client.get(f"/v1/wallets/{unique()}/events", headers=AUTH)
    body = await resp.json()
    assert resp.status in (200, 404), body
    if resp.status == 200:
        assert body == {"events": [], "next": None}
    else:
        assert_error(body)


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 6, 1000])
async def test_paging_with_next_visits_every_event_exactly_once(client: Client, limit: int) -> None:
    user = unique()
    transids = [await credit(client, user, str(i)) for i in range(1, 5)]
    await reverse(client, user, transids[1], "2")
    expected = [e["position"] for e in await all_events(client, user)]
    assert len(expected) == 5

    seen: list[int] = []
    params = {"limit": str(limit)}
    pages = 0
    while True:
        page = await get_json(client, f"/v1/wallets/{user}/events", params=params)
        pages += 1
        assert pages <= 10, "paging does not end"
        assert set(page) >= {"events", "next"}
        assert len(page["events"]) <= limit
        seen.extend(e["position"] for e in page["events"])
        if page["next"] is None:
            break
        assert isinstance(page["next"], str) and page["next"]
        assert page["events"], "an empty page must be the last one"
        params = {"limit": str(limit), "after": page["next"]}
    assert seen == expected


async def test_next_is_null_on_a_short_last_page(client: Client) -> None:
    user = unique()
    for amount in ("1", "2", "3"):
        await credit(client, user, amount)
    page = await events_page(client, user, limit="2")
    assert [e["amount"] for e in page["events"]] == ["1", "2"]
    assert isinstance(page["next"], str)
    page = await events_page(client, user, limit="2", after=page["next"])
    assert [e["amount"] for e in page["events"]] == ["3"]
    assert page["next"] is None


async def test_numeric_after_is_a_position(client: Client) -> None:
    user = unique()
    for amount in ("1", "2", "3"):
        await credit(client, user, amount)
    events = await all_events(client, user)
    page = await events_page(client, user, after=str(events[0]["position"]))
    assert [e["amount"] for e in page["events"]] == ["2", "3"]
    page = await events_page(client, user, after=str(events[-1]["position"]))
    assert page == {"events": [], "next": None}
    page = await events_page(client, user, after="0")
    assert [e["position"] for e in page["events"]] == [e["position"] for e in events]


async def test_cursor_and_numeric_after_agree(client: Client) -> None:
    user = unique()
    for amount in ("1", "2", "3"):
        await credit(client, user, amount)
    first = await events_page(client, user, limit="1")
    cursor = first["next"]
    position = first["events"][0]["position"]
    by_cursor = await events_page(client, user, after=cursor)
    by_number = await events_page(client, user, after=str(position))
    assert by_cursor == by_number
    assert [e["amount"] for e in by_cursor["events"]] == ["2", "3"]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_malformed_cursor_answers_400(client: Client, cursor: str) -> None:
    user = unique()
    await credit(client, user, "1")
    body = await events_page(client, user, status=400, after=cursor)
    assert_error(body)


@pytest.mark.parametrize("limit", BAD_LIMITS)
async def test_malformed_event_limit_answers_400(client: Client, limit: str) -> None:
    body = await events_page(client, unique(), status=400, limit=limit)
    assert_error(body)


# --- the postback log ---------------------------------------------------------------------------


async def postbacks(client: Client, **params: str) -> list[Json]:
    body = await get_json(client, "/v1/postbacks", params={"limit": "1000", **params})
    entries: list[Json] = body["postbacks"]
    return entries


def of_user(entries: list[Json], user: str) -> list[Json]:
    return [e for e in entries if e.get("params", {}).get("subid") == user]


async def test_postback_log_is_newest_first_with_contract_fields(client: Client) -> None:
    user = unique()
    for amount in ("1", "2", "3"):
        await credit(client, user, amount)
    entries = await postbacks(client)
    mine = of_user(entries, user)
    assert [e["params"]["reward"] for e in mine] == ["3", "2", "1"]
    for entry in entries:
        assert set(entry) >= {"received_at", "provider", "outcome", "http_status", "detail"}
        parse_time(entry["received_at"])
    times = [parse_time(e["received_at"]) for e in entries]
    assert times == sorted(times, reverse=True)
    assert mine[0]["provider"] == "medioot"
    assert mine[0]["outcome"] == "credited"
    assert mine[0]["http_status"] == 200


async def test_postback_log_shows_refused_postbacks_without_the_signature(
    client: Client,
) -> None:
    user = unique()
    params = medioot(user, unique("t"), "5", secret="not-the-secret")
    resp = await client.get("/postbacks/medioot", params=params)
    assert resp.status == 403
    # A second copy with the parameter name in another case must not leak either.
    upper = {k if k != "signature" else "Signature": v for k, v in params.items()}
    upper["transid"] = unique("t")
    upper["Signature"] = medioot(user, upper["transid"], "5", secret="wrong-again")["signature"]
    resp = await client.get("/postbacks/medioot", params=upper)
    assert resp.status == 403

    resp = await client.get("/v1/postbacks", headers=AUTH, params={"limit": "1000"})
    text = await resp.text()
    assert params["signature"] not in text
    assert upper["Signature"] not in text
    mine = of_user((await resp.json())["postbacks"], user)
    assert len(mine) == 2
    for entry in mine:
        assert entry["outcome"] == "rejected"
        assert entry["http_status"] == 403
        assert entry["detail"]
        assert all(name.lower() != "signature" for name in entry["params"])
    assert (await get_json(client, f"/v1/wallets/{user}", status=404))["error"] == (
        "wallet_not_found"
    )


async def test_postback_log_never_holds_the_signature_of_a_good_postback(
    client: Client,
) -> None:
    user = unique()
    params = medioot(user, unique("t"), "4")
    resp = await client.get("/postbacks/medioot", params=params)
    assert resp.status == 200
    resp = await client.get("/v1/postbacks", headers=AUTH, params={"limit": "1000"})
    text = await resp.text()
    assert params["signature"] not in text
    assert MEDIOOT_SECRET not in text
    (entry,) = of_user((await resp.json())["postbacks"], user)
    assert "signature" not in {name.lower() for name in entry["params"]}


async def test_postback_log_filters_by_outcome_and_provider(client: Client) -> None:
    user = unique()
    transid = await credit(client, user, "1")
    resp = await client.get("/postbacks/medioot", params=medioot(user, transid, "1"))
    assert await resp.text() == "DUP"
    resp = await client.get(
        "/postbacks/medioot", params=medioot(user, unique("t"), "1", secret="nope")
    )
    assert resp.status == 403
    resp = await client.get("/postbacks/medioot", params={"subid": user, "transid": "x"})
    assert resp.status == 400

    expected = {"credited": 200, "duplicate": 200, "rejected": 403, "invalid": 400}
    for outcome, status in expected.items():
        entries = await postbacks(client, outcome=outcome)
        assert entries and all(e["outcome"] == outcome for e in entries), outcome
        mine = of_user(entries, user)
        assert len(mine) == 1, outcome
        assert mine[0]["http_status"] == status

    medioot_entries = await postbacks(client, provider="medioot")
    assert len(of_user(medioot_entries, user)) == 4
    assert all(e["provider"] == "medioot" for e in medioot_entries)
    assert await postbacks(client, provider="no-such-provider") == []
    both = await postbacks(client, provider="medioot", outcome="duplicate")
    assert len(of_user(both, user)) == 1


async def test_postback_log_limit(client: Client) -> None:
    user = unique()
    for amount in ("1", "2", "3"):
        await credit(client, user, amount)
    body = await get_json(client, "/v1/postbacks", params={"limit": "2"})
    assert len(body["postbacks"]) == 2
    assert [e["params"]["reward"] for e in body["postbacks"]] == ["3", "2"]
    body = await get_json(client, "/v1/postbacks", params={"limit": "1", "outcome": "credited"})
    assert len(body["postbacks"]) == 1


@pytest.mark.parametrize("outcome", ["bogus", "CREDITED", "credited ", "1"])
async def test_postback_log_invalid_outcome_answers_400(client: Client, outcome: str) -> None:
    body = await get_json(client, "/v1/postbacks", status=400, params={"outcome": outcome})
    assert_error(body)


@pytest.mark.parametrize("limit", BAD_LIMITS)
async def test_postback_log_malformed_limit_answers_400(client: Client, limit: str) -> None:
    body = await get_json(client, "/v1/postbacks", status=400, params={"limit": limit})
    assert_error(body)


async def test_postback_log_records_the_request_id_it_answered_with(client: Client) -> None:
    user = unique()
    request_id = unique("req")
    resp = await client.get(
        "/postbacks/medioot",
        params=medioot(user, unique("t"), "1"),
        headers={"X-Request-Id": request_id},
    )
    assert resp.headers.get("X-Request-Id") == request_id
    (entry,) = of_user(await postbacks(client), user)
    assert entry.get("request_id") == request_id


# --- query parameters: only those a route declares, once each -----------------------------------


def _concrete(path: str) -> str:
    """A /v1/ route template with every path parameter filled in."""
    return re.sub(r"\{[^}]+\}", "x1", path)


V1_GETS = [op for op in OPERATIONS if op.method == "get"]


@pytest.mark.parametrize("operation", V1_GETS, ids=[op.path for op in V1_GETS])
async def test_every_v1_get_route_refuses_an_unknown_query_parameter(
    client: Client, operation: Operation
) -> None:
    declared = [p.name for p in operation.params if p.where == "query"]
    resp = await client.get(_concrete(operation.path), headers=SPEND_AUTH, params={"user_id": "x"})
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"] == "unknown_parameter"
    assert "unknown query parameter user_id" in body["detail"]
    expected = ", ".join(declared) if declared else "no query parameter"
    assert body["detail"].endswith(expected)


async def test_postbacks_with_user_id_is_refused_not_everyone_s_log(client: Client) -> None:
    await credit(client, unique(), "1")
    body = await get_json(client, "/v1/postbacks", status=400, params={"user_id": "x"})
    assert body == {
        "error": "unknown_parameter",
        "detail": "unknown query parameter user_id; this route takes provider, outcome, user,"
        " transaction, since, until, before, limit",
    }


async def test_a_repeated_query_parameter_answers_400(client: Client) -> None:
    body = await get_json(client, "/v1/postbacks?limit=1&limit=2", status=400)
    assert body["error"] == "repeated_parameter"
    assert "limit" in body["detail"]


async def test_an_unprintable_parameter_name_is_shown_escaped(client: Client) -> None:
    body = await get_json(client, "/v1/postbacks?%E2%80%8Bx%00=1", status=400)
    assert body["error"] == "unknown_parameter"
    assert "\\x00" in body["detail"] and "\x00" not in body["detail"]


async def test_declared_parameters_still_work(client: Client) -> None:
    user = unique()
    await credit(client, user, "1")
    body = await get_json(client, "/v1/postbacks", params={"user": user, "limit": "5"})
    assert len(body["postbacks"]) == 1


async def test_an_unknown_parameter_without_a_key_is_401(client: Client) -> None:
    resp = await client.get("/v1/postbacks", params={"user_id": "x"})
    assert resp.status == 401


# --- unknown routes, methods --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/nope", "/v1/wallets", "/v1/wallets/", "/v1/wallets/a/b/c", "/v1/"]
)
async def test_unknown_v1_route_is_json_404(client: Client, path: str) -> None:
    resp = await client.get(path, headers=AUTH)
    assert resp.status == 404, await resp.text()
    assert resp.content_type == "application/json"
    assert_error(await resp.json())


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/wallets/a/b/c"])
async def test_unknown_v1_route_without_a_key_is_json_401_or_404(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status in (401, 404), await resp.text()
    assert resp.content_type == "application/json"
    assert_error(await resp.json())


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_other_methods_on_v1_routes_are_json_405(client: Client, method: str) -> None:
    for template in ROUTES:
        resp = await client.request(method, route_path(template), headers=AUTH)
        assert resp.status == 405, (method, template, await resp.text())
        assert resp.content_type == "application/json"
        assert_error(await resp.json())


# --- probes and metrics -------------------------------------------------------------------------


async def test_healthz_and_readyz(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"


async def test_metrics_is_prometheus_text_with_every_metric(client: Client) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    for name in (
        "ledger_postbacks_total",
        "ledger_postback_signature_failures_total",
        "ledger_postback_duration_seconds",
        "ledger_events_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    samples = await metric_samples(client)
    names = {n for n, _, _ in samples}
    assert "ledger_postback_duration_seconds_bucket" in names
    assert "ledger_postback_duration_seconds_count" in names
    # Series exist at zero before the first postback of their kind.
    sample(samples, "ledger_postbacks_total", provider="medioot", outcome="conflict")
    sample(samples, "ledger_postback_signature_failures_total", provider="medioot", reason="token")
    sample(samples, "ledger_events_total", type="receipt_status_changed")


async def test_metrics_count_postbacks_by_outcome(client: Client) -> None:
    before = await metric_samples(client)
    user = unique()
    transid = await credit(client, user, "2")
    resp = await client.get("/postbacks/medioot", params=medioot(user, transid, "2"))
    assert await resp.text() == "DUP"
    resp = await client.get("/postbacks/medioot", params=medioot(user, transid, "3"))
    assert (resp.status, await resp.text()) == (200, "DUP")  # a conflict
    await reverse(client, user, transid, "2")
    resp = await client.get(
        "/postbacks/medioot", params=medioot(user, unique("t"), "2", secret="bad")
    )
    assert resp.status == 403
    resp = await client.get("/postbacks/medioot", params=medioot(user, unique("t"), "-2"))
    assert resp.status == 400
    after = await metric_samples(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    total = "ledger_postbacks_total"
    assert delta(total, provider="medioot", outcome="credited") == 1
    assert delta(total, provider="medioot", outcome="duplicate") == 1
    assert delta(total, provider="medioot", outcome="conflict") == 1
    assert delta(total, provider="medioot", outcome="reversed") == 1
    assert delta(total, provider="medioot", outcome="rejected") == 1
    assert delta(total, provider="medioot", outcome="invalid") == 1
    assert delta(total, provider="medioot", outcome="unavailable") == 0
    failures = "ledger_postback_signature_failures_total"
    assert delta(failures, provider="medioot", reason="signature") == 1
    assert delta(failures, provider="medioot", reason="token") == 0
    assert delta("ledger_postback_duration_seconds_count", provider="medioot") == 6
    assert delta("ledger_events_total", type="credited") == 1
    assert delta("ledger_events_total", type="reversed") == 1


# --- request ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/metrics", {}),
        ("GET", "/v1/postbacks", AUTH),
        ("GET", "/v1/postbacks", {}),
        ("GET", "/v1/postbacks?limit=0", AUTH),
        ("GET", "/v1/wallets/nobody-here", AUTH),
        ("GET", "/v1/nope", AUTH),
        ("POST", "/v1/postbacks", AUTH),
        ("GET", "/postbacks/medioot", {}),
        ("GET", "/postbacks/no-such-wall", {}),
        ("GET", "/no-such-page", {}),
        ("DELETE", "/healthz", {}),
        ("PUT", "/postbacks/medioot", {}),
        ("POST", "/metrics", {}),
    ],
)
async def test_every_response_carries_a_request_id(
    client: Client, method: str, path: str, headers: dict[str, str]
) -> None:
    resp = await client.request(method, path, headers=headers)
    assert resp.status < 500, await resp.text()
    assert resp.headers.get("X-Request-Id"), (resp.status, dict(resp.headers))

    request_id = unique("rid")
    resp = await client.request(method, path, headers={**headers, "X-Request-Id": request_id})
    assert resp.headers.get("X-Request-Id") == request_id, (resp.status, dict(resp.headers))


async def test_request_ids_differ_between_requests(client: Client) -> None:
    ids = set()
    for _ in range(5):
        resp = await client.get("/healthz")
        ids.add(resp.headers["X-Request-Id"])
    assert len(ids) == 5


@pytest.mark.parametrize("incoming", ["has space", "x" * 65, "semi;colon", 'quote"d', "é"])
async def test_an_unsafe_incoming_request_id_is_replaced(client: Client, incoming: str) -> None:
    resp = await client.get("/healthz", headers={"X-Request-Id": incoming})
    assert resp.status == 200
    outgoing = resp.headers.get("X-Request-Id")
    assert outgoing and outgoing != incoming


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/healthz", {}, 200),
        ("GET", "/v1/nope", AUTH, 404),
        ("GET", "/v1/postbacks", {}, 401),
        ("GET", "/no-such-page", {}, 404),
        ("GET", "/postbacks/no-such-wall", {}, 404),
        ("PUT", "/postbacks/medioot", {}, 405),
    ],
)
async def test_the_request_log_line_has_the_status_answered(
    client: Client, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    request_id = unique("rid")
    with capture_logs() as logs:
        resp = await client.request(method, path, headers={**headers, "X-Request-Id": request_id})
    assert resp.status == status
    lines = [e for e in logs if e.get("event") == "request"]
    assert len(lines) == 1, logs
    assert lines[0].get("status") == status, lines[0]
    assert lines[0].get("request_id", request_id) == request_id
