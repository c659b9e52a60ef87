"""Two listeners: with [server.internal], the walls' address answers only the postback endpoints
and /healthz, the internal one the API, /metrics and the probes; without it, one address serves
everything and start-up warns about it. Real `serve` processes, one worker and two."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from service.app import create_app
from service.settings import Settings
from service.web.listeners import INTERNAL_PATHS, WALLS_PATHS, covers
from tests.helpers import AUTH, MEDIOOT_SECRET, READ_KEY, database_toml, medioot, unique
from tests.integration.test_workers import free_port, ready
from tests.processes import Service


def write_config(path: Path, database_url: str, internal_port: int | None) -> Path:
    text = (
        database_toml(database_url)
        + f'[[providers]]\nname = "medioot"\nprotocol = "medioot"\nsecret = "{MEDIOOT_SECRET}"\n'
        f'[[api_keys]]\nname = "r"\nkey = "{READ_KEY}"\nscopes = ["read"]\n'
    )
    if internal_port is not None:
        text = f'[server.internal]\nhost = "127.0.0.1"\nport = {internal_port}\n' + text
    path.write_text(text)
    return path


async def get(session: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[int, str]:
    async with session.get(url, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.text()


@pytest.mark.parametrize("workers", [1, 2])
async def test_internal_routes_answer_only_on_the_internal_listener(
    database_url: str, tmp_path: Path, services: list[Service], workers: int
) -> None:
    walls_port, internal_port = free_port(), free_port()
    config = write_config(tmp_path / "ledger.toml", database_url, internal_port)
    services.append(Service(config, walls_port, tmp_path / "out.log", "--workers", str(workers)))
    walls, internal = f"http://127.0.0.1:{walls_port}", f"http://127.0.0.1:{internal_port}"
    await ready(internal)
    user = unique()
    async with aiohttp.ClientSession() as session:
        status, text = await get(
            session, f"{walls}/postbacks/medioot", params=medioot(user, unique("t"), "2")
        )
        assert (status, text) == (200, "OK")
        unknown = await get(session, f"{walls}/no-such-page")
        assert unknown[0] == 404

        # The walls' address: only the postbacks and /healthz; the rest is an unknown path.
        assert (await get(session, f"{walls}/healthz"))[0] == 200
        for path, headers in (
            ("/v1/wallets/" + user, AUTH),
            ("/v1/wallets/" + user, {}),
            ("/v1/openapi.json", AUTH),
            ("/v1/events", AUTH),
            ("/v1/no-such-route", {}),
            ("/metrics", {}),
            ("/readyz", {}),
            ("/ui/", {}),
            ("/ui/sign-in", {}),
            ("/ui/static/ui.css", {}),
        ):
            assert await get(session, walls + path, headers=headers) == unknown, path
        async with session.post(f"{walls}/metrics") as resp:
            assert resp.status == 404

        # The internal address: the API, metrics and probes; postbacks are an unknown path.
        status, text = await get(session, f"{internal}/v1/wallets/{user}", headers=AUTH)
        assert status == 200 and json.loads(text)["balance"] == "2"
        assert (await get(session, f"{internal}/v1/wallets/{user}"))[0] == 401
        status, text = await get(session, f"{internal}/metrics")
        assert status == 200 and "ledger_postbacks_total" in text
        assert (await get(session, f"{internal}/healthz"))[0] == 200
        assert (await get(session, f"{internal}/readyz"))[0] == 200
        status, text = await get(session, f"{internal}/ui/")  # the sign-in page, redirected to
        assert status == 200 and 'action="/ui/sign-in"' in text
        for path in ("/postbacks/medioot", "/no-such-page"):
            params = medioot(user, unique("t"), "5")
            assert await get(session, internal + path, params=params) == unknown, path
        async with session.post(f"{internal}/postbacks/medioot", data=params) as resp:
            assert resp.status == 404
        status, text = await get(session, f"{internal}/v1/wallets/{user}", headers=AUTH)
        assert json.loads(text)["balance"] == "2", "a postback on the internal address counted"
    assert not any(
        line.get("level") == "warning" and "share" in str(line.get("event"))
        for line in services[0].lines()
    )


async def test_one_listener_serves_everything_and_warns_at_start_up(
    database_url: str, tmp_path: Path, services: list[Service]
) -> None:
    port = free_port()
    config = write_config(tmp_path / "ledger.toml", database_url, None)
    services.append(Service(config, port, tmp_path / "out.log"))
    url = f"http://127.0.0.1:{port}"
    await ready(url)
    async with aiohttp.ClientSession() as session:
        assert (await get(session, f"{url}/metrics"))[0] == 200
        assert (await get(session, f"{url}/v1/openapi.json", headers=AUTH))[0] == 200
        assert (await get(session, f"{url}/postbacks/medioot"))[0] == 400
    warnings = [line for line in services[0].lines() if line.get("level") == "warning"]
    assert any(
        "/v1/" in str(w["event"]) and "/metrics" in str(w["event"]) and "share" in str(w["event"])
        for w in warnings
    ), warnings


def test_every_route_is_served_by_one_listener_or_both(settings: Settings) -> None:
    app = create_app(settings)
    for route in app.router.routes():
        assert route.resource is not None
        path = route.resource.canonical
        assert covers(WALLS_PATHS, path) or covers(INTERNAL_PATHS, path), path
    assert not covers(WALLS_PATHS, "/v1/wallets/x") and not covers(WALLS_PATHS, "/metrics")
    assert not covers(INTERNAL_PATHS, "/postbacks/medioot")
