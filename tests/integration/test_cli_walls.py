"""`postback-ledger setup` and `simulate`, as real subprocesses; simulate against a live app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from tests import helpers
from tests.integration import test_postbacks_profiles as walls
from tests.integration.test_cli import assert_one_line_error, cli_env, run_cli

Client = TestClient  # type: ignore[type-arg]


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def config_file(tmp_path: Path, database_url: str) -> Path:
    """The providers of `test_postbacks_profiles`, as the TOML an operator would write."""
    settings = walls.settings_for(database_url)
    lines = [f"[server]\npublic_url = {json.dumps(walls.PUBLIC_URL)}\n"]
    for provider in settings.providers:
        lines.append("[[providers]]")
        for key in ("name", "protocol", "secret", "secrets", "url_token", "url_tokens"):
            value = getattr(provider, key)
            if value:
                lines.append(f"{key} = {toml_value(value)}")
        if provider.allowed_ips:
            lines.append(f"allowed_ips = {toml_value(provider.allowed_ips)}")
        if provider.profile is not None:
            lines.append(f"profile = {toml_value(provider.profile)}")
        lines.append("")
    path = tmp_path / "walls.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
async def client(aiohttp_client: Any, database_url: str) -> Client:
    return await aiohttp_client(create_app(walls.settings_for(database_url)))  # type: ignore[no-any-return]


async def test_setup_prints_the_url_first(tmp_path: Path, database_url: str) -> None:
    config = str(config_file(tmp_path, database_url))
    base = "https://ledger.example.com/"
    code, out, err = await run_cli("setup", "kiwi", "--base-url", base, "--config", config)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "https://ledger.example.com/postbacks/kiwi",
        "secret: Kiwiwall dashboard, your app: the Secret Key button",
        "allowed_ips: 127.0.0.1, ::1",
        "notes: Kiwiwall posts from 34.193.235.172 (allowed by default). The signature covers"
        " only sub_id and amount: keep allowed_ips.",
    ]
    code, out, _ = await run_cli("setup", "urlw", "--base-url", base, "--config", config)
    assert out.splitlines()[:3] == [
        f"https://ledger.example.com/postbacks/urlw/{walls.TOKEN}",
        f"reversals: https://ledger.example.com/postbacks/urlw/{walls.TOKEN}/reversal",
        "secret: none (the wall does not sign)",
    ]
    code, out, _ = await run_cli("setup", "medioot", "--base-url", base, "--config", config)
    assert out.splitlines()[0].startswith(
        "https://ledger.example.com/postbacks/medioot?subid={subid}&transid={transid}"
    )
    code, out, _ = await run_cli("setup", "adgate", "--base-url", base, "--config", config)
    assert out.splitlines()[0].startswith(
        f"https://ledger.example.com/postbacks/adgate/{walls.TOKEN}?conversion_id="
    )
    assert "allowed_ips: 52.42.57.125" in out.splitlines()
    code, out, err = await run_cli("setup", "nope", "--base-url", base, "--config", config)
    assert_one_line_error(code, out, err, "no provider named 'nope'")


@pytest.mark.parametrize(
    "provider",
    ["kiwi", "tmpl", "sorted", "urlw", "partial", "tokw", "medioot", "inbrain", "adgate"],
)
async def test_simulate_credits_and_reverses(
    client: Client, tmp_path: Path, database_url: str, provider: str
) -> None:
    config = str(config_file(tmp_path, database_url))
    url = str(client.make_url("")).rstrip("/")
    user, tx = helpers.unique(), helpers.unique("tx")
    common = ("--user", user, "--transaction", tx, "--url", url, "--config", config)
    code, out, err = await run_cli("simulate", provider, "--amount", "12.50", *common)
    assert code == 0, (out, err)
    assert out.split(": ", 1)[1].startswith("200"), out
    assert await walls.balance(client, user) == "12.50"
    code, out, err = await run_cli("simulate", provider, "--amount", "12.50", "--reverse", *common)
    assert code == 0, (out, err)
    assert await walls.balance(client, user) in ("0", "0.00")


async def test_simulate_a_refusal_exits_1(
    client: Client, tmp_path: Path, database_url: str
) -> None:
    config = str(config_file(tmp_path, database_url))
    url = str(client.make_url("")).rstrip("/")
    args = ("--user", helpers.unique(), "--amount", "1e3", "--url", url, "--config", config)
    code, out, _ = await run_cli("simulate", "tmpl", *args)
    assert code == 1
    assert out.startswith("GET /postbacks/tmpl: 400 currency must be a plain decimal")


async def test_simulate_an_unreachable_service_is_one_line(
    tmp_path: Path, database_url: str
) -> None:
    config = str(config_file(tmp_path, database_url))
    args = ("--user", "u", "--amount", "1", "--url", "http://127.0.0.1:9", "--config", config)
    code, out, err = await run_cli("simulate", "kiwi", *args, env=cli_env())
    assert_one_line_error(code, out, err, "simulate")
