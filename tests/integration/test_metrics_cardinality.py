"""Metrics stay cheap: every label value comes from configuration or a fixed set, so no request,
however hostile, makes a new series; and every configured provider's series exist at zero from
start-up, which the alert rules rely on."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.domain.events import EventType, Outcome
from service.domain.spending import Kind
from service.metrics import AUTH_REASONS, SIGN_IN_OUTCOMES, SPEND_OUTCOMES
from tests import helpers
from tests.helpers import medioot, unique

Client = TestClient[web.Request, web.Application]
Series = tuple[str, frozenset[tuple[str, str]]]

FIXED_LABEL_VALUES = {
    "outcome": {o.value for o in Outcome} | set(SPEND_OUTCOMES) | set(SIGN_IN_OUTCOMES),
    "operation": {k.value for k in Kind},
    "reason": set(AUTH_REASONS),
    "type": {t.value for t in EventType},
}


async def scrape(client: Client) -> dict[Series, float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await resp.text())
        for sample in family.samples
    }


def ledger_series(scraped: dict[Series, float]) -> set[Series]:
    return {s for s in scraped if s[0].startswith("ledger_")}


async def test_unknown_provider_paths_and_hostile_requests_add_no_series(client: Client) -> None:
    before = await scrape(client)
    marker = unique("evil")
    bad = medioot(unique(), unique("t"), "1.00", secret="wrong")

    unknown_paths = [
        f"/postbacks/{marker}",
        f"/postbacks/{marker}/{marker}",
        "/postbacks/medioot/" + marker,  # known provider, but it has no URL token
        "/postbacks/" + quote(f'{marker}"}} ledger_postbacks_total{{provider="x'),
        "/postbacks/" + quote(f"{marker}\n{marker}", safe=""),
        "/postbacks/" + quote(f"{marker}\u00e9\U0001f4a5"),
        "/postbacks/" + marker + "x" * 1000,
        "/postbacks/MEDIOOT",  # names are exact
        f"/{marker}",
        f"/metrics/{marker}",
    ]
    for path in unknown_paths:
        for method in ("GET", "POST"):
            resp = await client.request(method, path, params=bad, data=b"subid=" + marker.encode())
            assert resp.status == 404, (method, path, resp.status)

    # Hostile data to a known provider only moves its existing series.
    hostile = {**bad, "provider": marker, "outcome": marker, "reason": marker, "type": marker}
    headers = {"X-Forwarded-For": marker, "X-Request-Id": marker, "User-Agent": marker}
    refused = 5
    for _ in range(refused):
        resp = await client.get("/postbacks/medioot", params=hostile, headers=headers)
        assert resp.status == 403
    resp = await client.get("/postbacks/medioot", params={"subid": marker})
    assert resp.status == 400

    after = await scrape(client)
    assert ledger_series(after) == ledger_series(before), "new ledger_* series appeared"
    assert set(after) == set(before), f"new series: {sorted(set(after) - set(before))[:5]}"
    for name, labels in after:
        for key, value in labels:
            assert marker not in value, (name, key, value)
            if name.startswith("ledger_") and key in FIXED_LABEL_VALUES:
                assert value in FIXED_LABEL_VALUES[key], (name, key, value)

    def counted(series: Series) -> float:
        return after[series] - before[series]

    rejected = (
        "ledger_postbacks_total",
        frozenset({"provider": "medioot", "outcome": "rejected"}.items()),
    )
    signature = (
        "ledger_postback_signature_failures_total",
        frozenset({"provider": "medioot", "reason": "signature"}.items()),
    )
    assert counted(rejected) == refused
    assert counted(signature) == refused


async def test_configured_providers_exist_at_zero_from_start_up(
    aiohttp_client: Any, database_url: str
) -> None:
    name = unique("cfg")
    settings = helpers.settings(
        database_url,
        providers=[{"name": name, "protocol": "medioot", "secret": "s3cret-for-metrics"}],
    )
    client: Client = await aiohttp_client(create_app(settings))
    scraped = await scrape(client)

    def value(metric: str, **labels: str) -> float | None:
        return scraped.get((metric, frozenset({"provider": name, **labels}.items())))

    for outcome in Outcome:
        assert value("ledger_postbacks_total", outcome=outcome.value) == 0, outcome
    for reason in AUTH_REASONS:
        assert value("ledger_postback_signature_failures_total", reason=reason) == 0, reason
    assert value("ledger_postback_duration_seconds_count") == 0
    assert value("ledger_postback_duration_seconds_bucket", le="+Inf") == 0
    for event_type in EventType:
        key = ("ledger_events_total", frozenset({"type": event_type.value}.items()))
        assert key in scraped, event_type
    assert ("ledger_database_up", frozenset()) in scraped
