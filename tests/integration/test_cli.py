"""The command line's handling of configuration, as a real subprocess."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import helpers

UNSET = "LEDGER_TEST_SURELY_UNSET_VARIABLE"

GOOD_PROVIDER = """
[[providers]]
name = "medioot"
protocol = "medioot"
secret = "a-secret"
"""


def cli_env(**extra: str) -> dict[str, str]:
    removed = ("DATABASE_URL", "LEDGER_CONFIG", UNSET)
    env = {k: v for k, v in os.environ.items() if k not in removed}
    return {**env, **extra}


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await helpers.run_cli(*args, env=env if env is not None else cli_env(), limit=60)


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string


def database_section(url: str) -> str:
    return f"[database]\nurl = {toml_string(url)}\n"


def assert_one_line_error(code: int, out: str, err: str, *names: str) -> str:
    assert code != 0, (out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# --- no configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["migrate", "verify", "serve"])
async def test_no_config_and_no_ledger_config_is_one_line_error(command: str) -> None:
    code, out, err = await run_cli(command)
    line = assert_one_line_error(code, out, err)
    assert "LEDGER_CONFIG" in line or "--config" in line
    assert out == ""


async def test_empty_ledger_config_counts_as_absent() -> None:
    code, out, err = await run_cli("migrate", env=cli_env(LEDGER_CONFIG=""))
    assert_one_line_error(code, out, err)


async def test_config_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    code, out, err = await run_cli("migrate", "--config", str(missing))
    assert_one_line_error(code, out, err, str(missing))


async def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    code, out, err = await run_cli("migrate", "--config", str(tmp_path))
    assert_one_line_error(code, out, err)


# --- malformed configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[server]\nhostname = '127.0.0.1'\n", ["hostname"]),
        ("[databse]\nurl = ''\n", ["databse"]),
        ("colour = 'blue'\n", ["colour"]),
        ("[database]\nurl = ''\npool_size = 3\n", ["pool_size"]),
        (GOOD_PROVIDER + "secrets = 'x'\n", ["secrets"]),
        (
            "[[api_keys]]\nname = 'k'\nkey = 'long-enough-key'\nscope = ['read']\n",
            ["scope"],
        ),
        # A quoted TOML key may hold a line break; the error must still be one line.
        ('[server]\n"host\\nname" = 1\n', ["host", "name"]),
        ('[server]\n"host\\rname" = 1\n', ["host", "name"]),
    ],
    ids=["server", "section", "top-level", "database", "provider", "api-key", "lf", "cr"],
)
async def test_unknown_key_is_named(tmp_path: Path, text: str, names: list[str]) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(text, encoding="utf-8")
    code, out, err = await run_cli("migrate", "--config", str(config))
    assert_one_line_error(code, out, err, *names)
    assert out == ""


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            f'[[providers]]\nname = "medioot"\nprotocol = "medioot"\nsecret = "${{{UNSET}}}"\n',
            [UNSET, "secret"],
        ),
        (
            f'[[api_keys]]\nname = "k"\nkey = "${{{UNSET}}}"\nscopes = ["read"]\n',
            [UNSET, "key"],
        ),
        (
            GOOD_PROVIDER + f'allowed_ips = ["10.0.0.0/8", "${{{UNSET}}}"]\n',
            [UNSET, "allowed_ips"],
        ),
        (f'[server]\nhost = "prefix-${{{UNSET}}}-suffix"\n', [UNSET, "host"]),
    ],
    ids=["secret", "api-key", "in-a-list", "inside-text"],
)
async def test_missing_variable_is_named(tmp_path: Path, text: str, names: list[str]) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(text, encoding="utf-8")
    code, out, err = await run_cli("migrate", "--config", str(config))
    assert_one_line_error(code, out, err, *names)


@pytest.mark.parametrize("command", ["migrate", "verify", "serve", "rebuild", "checkpoint"])
async def test_every_command_refuses_a_missing_variable(tmp_path: Path, command: str) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(
        f'[[providers]]\nname = "medioot"\nprotocol = "medioot"\nsecret = "${{{UNSET}}}"\n',
        encoding="utf-8",
    )
    code, out, err = await run_cli(command, "--config", str(config))
    assert_one_line_error(code, out, err, UNSET)


@pytest.mark.parametrize(
    "text",
    [
        "[server\nport = 8080\n",
        "[server]\nport = \n",
        "[server]\nhost = 'unterminated\n",
        "[server]\nport = 1\nport = 2\n",
        "this is not toml at all\n",
        '[database]\nurl = "a"\n[database]\nurl = "b"\n',
    ],
    ids=["table", "value", "string", "duplicate-key", "prose", "duplicate-table"],
)
async def test_invalid_toml_is_one_line_error(tmp_path: Path, text: str) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(text, encoding="utf-8")
    code, out, err = await run_cli("migrate", "--config", str(config))
    line = assert_one_line_error(code, out, err)
    assert "TOML" in line or "toml" in line
    assert out == ""


async def test_file_that_is_not_utf8_is_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_bytes(b"[server]\nhost = '\xff\xfe'\n")
    code, out, err = await run_cli("migrate", "--config", str(config))
    assert_one_line_error(code, out, err)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[server]\nport = 'eighty'\n", ["server.port"]),
        ("[server]\nport = 70000\n", ["server.port"]),
        ("[database]\nurl = 5\n", ["database.url"]),
        ("[database]\ntimeout = -1\n", ["database.timeout"]),
        ("server = 5\n", ["server"]),
        ('[[providers]]\nprotocol = "medioot"\nsecret = "s"\n', ["providers[0]", "name"]),
        ('[[providers]]\nname = "w"\nprotocol = "nonesuch"\nsecret = "s"\n', ["protocol"]),
        ('[[providers]]\nname = "w"\nprotocol = "medioot"\n', ["providers[0].secret"]),
        (GOOD_PROVIDER + 'allowed_ips = ["not-an-ip"]\n', ["allowed_ips"]),
        ("[server]\ntrusted_proxies = ['10.0.0.0/33']\n", ["trusted_proxies"]),
        ("[[api_keys]]\nname = 'k'\nkey = 'short'\n", ["api_keys[0].key"]),
        ("[[api_keys]]\nname = 'k'\nkey = 'long-enough-key'\nscopes = ['write']\n", ["scopes"]),
        ('[server]\nhost = "${1BAD}"\n', ["server.host"]),
        ('[server]\nhost = "${BAD\\nNAME}"\n', ["server.host"]),
    ],
    ids=[
        "port-type",
        "port-range",
        "url-type",
        "timeout",
        "section-type",
        "provider-name",
        "protocol",
        "secret",
        "allowed-ips",
        "trusted-proxies",
        "key-length",
        "scope",
        "variable-name",
        "variable-name-with-line-break",
    ],
)
async def test_malformed_value_is_named(tmp_path: Path, text: str, names: list[str]) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(text, encoding="utf-8")
    code, out, err = await run_cli("migrate", "--config", str(config))
    assert_one_line_error(code, out, err, *names)


@pytest.mark.parametrize("command", ["migrate", "serve"])
async def test_two_api_keys_with_one_key_exit_2_naming_the_entry(
    tmp_path: Path, command: str
) -> None:
    shared = "shared-api-key-0001"
    config = tmp_path / "ledger.toml"
    config.write_text(
        f"[[api_keys]]\nname = 'wallets'\nkey = '{shared}'\nscopes = ['read']\n"
        f"[[api_keys]]\nname = 'reports'\nkey = '{shared}'\nscopes = []\n",
        encoding="utf-8",
    )
    code, out, err = await run_cli(command, "--config", str(config))
    assert code == 2
    line = assert_one_line_error(code, out, err, "api_keys[1].key", "reports")
    assert shared not in line and shared not in out


async def test_internal_listener_on_the_walls_port_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text("[server]\nport = 8080\n[server.internal]\nport = 8080\n")
    code, out, err = await run_cli("serve", "--config", str(config))
    assert code == 2
    assert_one_line_error(code, out, err, "server.internal.port")


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_port_flag_on_the_internal_port_exits_2(tmp_path: Path, workers: str) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(
        "[server]\nport = 8080\n[server.internal]\nport = 8081\n"
        f"[integrity]\nchain_key = {json.dumps(helpers.CHAIN_KEY)}\n"
    )
    code, out, err = await run_cli(
        "serve", "--config", str(config), "--port", "8081", "--workers", workers
    )
    assert code == 2
    assert_one_line_error(code, out, err, "--port", "server.internal.port")


# --- where the configuration comes from ---------------------------------------------------------


async def test_ledger_config_is_used_without_config_flag(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(database_section(database_url) + GOOD_PROVIDER, encoding="utf-8")
    code, out, err = await run_cli("migrate", env=cli_env(LEDGER_CONFIG=str(config)))
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1, out


async def test_ledger_config_that_is_malformed_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text("[server]\nhostname = 'x'\n", encoding="utf-8")
    code, out, err = await run_cli("migrate", env=cli_env(LEDGER_CONFIG=str(config)))
    assert_one_line_error(code, out, err, "hostname")


async def test_config_flag_wins_over_ledger_config(database_url: str, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(database_section(database_url), encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nhostname = 'x'\n", encoding="utf-8")
    code, _out, err = await run_cli(
        "migrate", "--config", str(good), env=cli_env(LEDGER_CONFIG=str(bad))
    )
    assert code == 0, err


async def test_database_url_variable_wins_over_the_file(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    # Were the file's URL used, the command would fail (and only after its connection wait).
    config.write_text(database_section("postgresql://nobody@127.0.0.1:1/none"), encoding="utf-8")
    code, _out, err = await run_cli(
        "migrate", "--config", str(config), env=cli_env(DATABASE_URL=database_url)
    )
    assert code == 0, err


async def test_variables_are_expanded_in_database_url(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(
        '[database]\nurl = "${LEDGER_TEST_DB_URL}"\nowner_url = "${LEDGER_TEST_OWNER_URL}"\n'
        '[integrity]\nchain_key = "${LEDGER_TEST_CHAIN_KEY}"\n' + GOOD_PROVIDER,
        encoding="utf-8",
    )
    env = cli_env(
        LEDGER_TEST_DB_URL=helpers.runtime_url(database_url),
        LEDGER_TEST_OWNER_URL=database_url,
        LEDGER_TEST_CHAIN_KEY=helpers.CHAIN_KEY,
    )
    code, out, err = await run_cli("migrate", "--config", str(config), env=env)
    assert code == 0, (out, err)
    code, out, err = await run_cli("verify", "--config", str(config), env=env)
    assert code == 0, (out, err)
    assert len(out.strip().splitlines()) == 1, out


# --- the chain key and the owner --------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "verify", "rebuild", "checkpoint"])
async def test_commands_that_need_the_chain_key_refuse_to_start_without_it(
    tmp_path: Path, command: str
) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(GOOD_PROVIDER, encoding="utf-8")
    code, out, err = await run_cli(command, "--config", str(config))
    assert code == 2
    assert_one_line_error(code, out, err, "integrity.chain_key")


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[integrity]\nchain_key = "too-short-a-key"\n', ["integrity.chain_key", "32"]),
        (f'[integrity]\nchain_key = "${{{UNSET}}}"\n', ["integrity.chain_key", UNSET]),
        ('[integrity]\nchain_keys = "x"\n', ["chain_keys"]),
        ('[database]\nowner_url = "postgresql://o@h/d"\n', ["database.owner_url"]),
    ],
    ids=["short", "unset-variable", "unknown-key", "owner-without-url"],
)
async def test_bad_integrity_settings_are_named(
    tmp_path: Path, text: str, names: list[str]
) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(text, encoding="utf-8")
    code, out, err = await run_cli("migrate", "--config", str(config))
    assert code == 2
    assert_one_line_error(code, out, err, *names)
