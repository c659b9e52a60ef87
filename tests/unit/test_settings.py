"""service/settings.py: parsing, ${VAR} expansion and validation of the TOML configuration."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from service.settings import ConfigError, Settings, load, parse

ROOT = Path(__file__).resolve().parents[2]
SECRET = "medioot-secret"


def medioot(**overrides: Any) -> dict[str, Any]:
    return {"name": "medioot", "protocol": "medioot", "secret": SECRET, **overrides}


def api_key(**overrides: Any) -> dict[str, Any]:
    return {"name": "reader", "key": "read-key-0001", "scopes": ["read"], **overrides}


def config_error(raw: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(raw, environ or {})
    return str(info.value)


# --- defaults ------------------------------------------------------------------------------------


def test_empty_config_gives_defaults() -> None:
    settings = parse({}, {})
    assert settings == Settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.server.trusted_proxies == []
    assert settings.server.max_body_bytes == 65536
    assert settings.database.url == ""
    assert settings.database.data_dir == ".data/postgres"
    assert settings.providers == []
    assert settings.api_keys == []


def test_partial_table_keeps_other_defaults() -> None:
    settings = parse({"server": {"port": 9000}}, {})
    assert settings.server.port == 9000
    assert settings.server.host == "127.0.0.1"
    assert settings.server.max_body_bytes == 65536


def test_full_config_parses() -> None:
    raw = {
        "server": {"host": "0.0.0.0", "port": 80, "trusted_proxies": ["10.0.0.0/8"]},
        "database": {"url": "postgresql://db/ledger", "data_dir": "/var/pg"},
        "providers": [medioot(allowed_ips=["52.42.57.125", "2001:db8::/32"])],
        "api_keys": [api_key()],
    }
    settings = parse(raw, {})
    assert settings.server.trusted_proxies == ["10.0.0.0/8"]
    assert settings.database.url == "postgresql://db/ledger"
    provider = settings.provider("medioot")
    assert provider is not None
    assert provider.secret == SECRET
    assert provider.allowed_ips == ["52.42.57.125", "2001:db8::/32"]
    assert settings.provider("other") is None
    assert settings.api_keys[0].scopes == ["read"]


def test_parse_does_not_modify_its_input() -> None:
    raw = {"database": {"url": "${DATABASE_URL}"}, "providers": [medioot(secret="${S}")]}
    before = copy.deepcopy(raw)
    parse(raw, {"DATABASE_URL": "postgresql://x/y", "S": "s"})
    assert raw == before


def test_providers_may_share_a_protocol() -> None:
    settings = parse({"providers": [medioot(name="app-one"), medioot(name="app_two")]}, {})
    assert [p.name for p in settings.providers] == ["app-one", "app_two"]


# --- ${VAR} expansion ----------------------------------------------------------------------------


def test_variable_is_expanded() -> None:
    settings = parse({"providers": [medioot(secret="${MEDIOOT_SECRET}")]}, {"MEDIOOT_SECRET": "s3"})
    assert settings.providers[0].secret == "s3"


def test_variable_is_expanded_inside_text() -> None:
    settings = parse({"server": {"host": "${H}.internal"}}, {"H": "ledger"})
    assert settings.server.host == "ledger.internal"


def test_variables_are_expanded_in_nested_lists_and_tables() -> None:
    raw = {
        "server": {"trusted_proxies": ["${PROXY}", "10.0.0.0/8"]},
        "providers": [medioot(), medioot(name="second", secret="${SECOND}", allowed_ips=["${IP}"])],
        "api_keys": [api_key(key="${KEY}", scopes=["${SCOPE}"])],
    }
    environ = {
        "PROXY": "192.168.0.0/16",
        "SECOND": "second-secret",
        "IP": "52.42.57.125",
        "KEY": "from-the-environment",
        "SCOPE": "read",
    }
    settings = parse(raw, environ)
    assert settings.server.trusted_proxies == ["192.168.0.0/16", "10.0.0.0/8"]
    assert settings.providers[1].secret == "second-secret"
    assert settings.providers[1].allowed_ips == ["52.42.57.125"]
    assert settings.api_keys[0].key == "from-the-environment"
    assert settings.api_keys[0].scopes == ["read"]


def test_expanded_value_is_not_expanded_again() -> None:
    settings = parse({"providers": [medioot(secret="${A}")]}, {"A": "${B}"})
    assert settings.providers[0].secret == "${B}"


def test_unset_variable_names_the_variable_and_the_key() -> None:
    message = config_error({"providers": [medioot(secret="${MEDIOOT_SECRET}")]})
    assert "MEDIOOT_SECRET" in message
    assert "providers[0].secret" in message


def test_unset_variable_in_a_nested_list_names_its_key() -> None:
    message = config_error({"providers": [medioot(allowed_ips=["1.2.3.4", "${ADGATE_IP}"])]})
    assert "ADGATE_IP" in message
    assert "providers[0].allowed_ips[1]" in message


def test_unset_variable_in_database_url_means_empty() -> None:
    settings = parse({"database": {"url": "${DATABASE_URL}"}}, {})
    assert settings.database.url == ""


def test_set_empty_variable_expands_to_empty() -> None:
    settings = parse({"server": {"host": "${EMPTY}127.0.0.1"}}, {"EMPTY": ""})
    assert settings.server.host == "127.0.0.1"


def test_invalid_variable_name_is_an_error() -> None:
    message = config_error({"server": {"host": "${NOT A NAME}"}})
    assert "server.host" in message


# --- DATABASE_URL --------------------------------------------------------------------------------


def test_database_url_variable_wins_over_the_file() -> None:
    raw = {"database": {"url": "postgresql://from-file/db"}}
    settings = parse(raw, {"DATABASE_URL": "postgresql://from-env/db"})
    assert settings.database.url == "postgresql://from-env/db"


def test_database_url_variable_applies_without_a_database_table() -> None:
    settings = parse({}, {"DATABASE_URL": "postgresql://from-env/db"})
    assert settings.database.url == "postgresql://from-env/db"
    assert settings.database.data_dir == ".data/postgres"


def test_database_url_variable_fills_the_placeholder() -> None:
    settings = parse({"database": {"url": "${DATABASE_URL}"}}, {"DATABASE_URL": "postgresql://e/d"})
    assert settings.database.url == "postgresql://e/d"


# --- unknown keys and wrong types ----------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    message = config_error({"sever": {"port": 80}})
    assert "sever" in message


def test_unknown_nested_key_names_the_key_path() -> None:
    message = config_error({"server": {"prot": 80}})
    assert "server" in message
    assert "prot" in message


def test_unknown_key_in_a_provider_names_its_position() -> None:
    message = config_error({"providers": [medioot(secert="x")]})
    assert "providers[0]" in message
    assert "secert" in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"server": {"port": "eighty"}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"server": {"trusted_proxies": "10.0.0.0/8"}}, "server.trusted_proxies"),
        ({"database": {"url": 5}}, "database.url"),
        ({"server": []}, "server"),
        ({"providers": {"name": "medioot"}}, "providers"),
        ({"api_keys": [api_key(scopes="read")]}, "api_keys[0].scopes"),
    ],
)
def test_wrong_type_names_the_key(raw: dict[str, Any], key: str) -> None:
    message = config_error(raw)
    assert key in message


def test_missing_required_provider_field() -> None:
    message = config_error({"providers": [{"name": "medioot", "secret": "s"}]})
    assert "protocol" in message
    assert "providers[0]" in message


# --- providers -----------------------------------------------------------------------------------


def test_unknown_protocol() -> None:
    message = config_error({"providers": [medioot(protocol="nosuchwall")]})
    assert "providers[0].protocol" in message
    assert "nosuchwall" in message


@pytest.mark.parametrize("name", ["", "Medioot", "has space", "-leading", "a/b", "x" * 65])
def test_invalid_provider_name(name: str) -> None:
    message = config_error({"providers": [medioot(name=name)]})
    assert "providers[0].name" in message


def test_duplicate_provider_name() -> None:
    message = config_error({"providers": [medioot(), medioot(secret="other")]})
    assert "providers[1].name" in message
    assert "medioot" in message


def test_medioot_without_secret() -> None:
    message = config_error({"providers": [{"name": "medioot", "protocol": "medioot"}]})
    assert "providers[0].secret" in message


def test_medioot_with_empty_secret_from_the_environment() -> None:
    message = config_error({"providers": [medioot(secret="${S}")]}, {"S": ""})
    assert "providers[0].secret" in message


# --- networks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "not-an-ip", "", "1.2.3", "2001:db8::/129"])
def test_bad_cidr_in_trusted_proxies(cidr: str) -> None:
    message = config_error({"server": {"trusted_proxies": ["10.0.0.0/8", cidr]}})
    assert "server.trusted_proxies[1]" in message


@pytest.mark.parametrize("cidr", ["52.42.57.300", "example.com", "1.2.3.4/abc"])
def test_bad_cidr_in_allowed_ips(cidr: str) -> None:
    message = config_error({"providers": [medioot(allowed_ips=[cidr])]})
    assert "providers[0].allowed_ips[0]" in message


def test_host_bits_in_a_cidr_are_accepted() -> None:
    settings = parse({"server": {"trusted_proxies": ["10.1.2.3/8"]}}, {})
    assert settings.server.trusted_proxies == ["10.1.2.3/8"]


# --- server --------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_port_out_of_range(port: int) -> None:
    message = config_error({"server": {"port": port}})
    assert "server.port" in message


@pytest.mark.parametrize("port", [1, 65535])
def test_port_limits_are_accepted(port: int) -> None:
    assert parse({"server": {"port": port}}, {}).server.port == port


def test_internal_listener_is_optional_and_parses() -> None:
    assert parse({}, {}).server.internal is None
    raw = {"server": {"internal": {"host": "10.0.0.5", "port": 9100}}}
    internal = parse(raw, {}).server.internal
    assert internal is not None and (internal.host, internal.port) == ("10.0.0.5", 9100)


@pytest.mark.parametrize(
    ("internal", "key"),
    [
        ({"port": 0}, "server.internal.port"),
        ({"port": 70000}, "server.internal.port"),
        ({"port": 8080}, "server.internal.port"),  # the walls' port
        ({"port": "x"}, "server.internal.port"),
        ({"hostname": "x"}, "hostname"),
    ],
)
def test_bad_internal_listener_names_the_key(internal: dict[str, Any], key: str) -> None:
    message = config_error({"server": {"port": 8080, "internal": internal}})
    assert key in message


@pytest.mark.parametrize("age", [-1, 61])
def test_metrics_max_age_is_bounded(age: float) -> None:
    assert "server.metrics_max_age" in config_error({"server": {"metrics_max_age": age}})


def test_max_body_bytes_must_be_positive() -> None:
    message = config_error({"server": {"max_body_bytes": 0}})
    assert "server.max_body_bytes" in message


# --- api keys ------------------------------------------------------------------------------------


def test_api_key_too_short() -> None:
    message = config_error({"api_keys": [api_key(key="short")]})
    assert "api_keys[0].key" in message


def test_api_key_from_unset_variable_names_it() -> None:
    message = config_error({"api_keys": [api_key(key="${WALLET_API_KEY}")]})
    assert "WALLET_API_KEY" in message
    assert "api_keys[0].key" in message


def test_api_key_duplicate_name() -> None:
    message = config_error({"api_keys": [api_key(), api_key(key="another-key-0002")]})
    assert "api_keys[1].name" in message


def test_api_key_duplicate_key_names_the_entry_but_not_the_key() -> None:
    shared = "the-same-key-0001"
    message = config_error(
        {
            "api_keys": [
                api_key(name="wallets", key=shared),
                api_key(name="other", key="another-key-0002"),
                api_key(name="reports", key=shared),
            ]
        }
    )
    assert "api_keys[2].key" in message and "reports" in message and "wallets" in message
    assert shared not in message and "\n" not in message


def test_api_key_unknown_scope() -> None:
    message = config_error({"api_keys": [api_key(scopes=["read", "write"])]})
    assert "api_keys[0].scopes" in message
    assert "write" in message


def test_api_key_without_scopes_is_allowed() -> None:
    settings = parse({"api_keys": [api_key(scopes=[])]}, {})
    assert settings.api_keys[0].scopes == []


# --- files ---------------------------------------------------------------------------------------


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.toml"
    path.write_text(
        '[server]\nport = 9090\n\n[[providers]]\nname = "medioot"\nprotocol = "medioot"\n'
        'secret = "${MEDIOOT_SECRET}"\n',
        encoding="utf-8",
    )
    settings = load(path, {"MEDIOOT_SECRET": "from-env"})
    assert settings.server.port == 9090
    assert settings.providers[0].secret == "from-env"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert str(path) in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 80\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert "TOML" in str(info.value)
    assert "\n" not in str(info.value)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError):
        load(path, {})


def test_dev_config_parses_with_an_empty_environment() -> None:
    settings = load(ROOT / "ops" / "dev.toml", {})
    assert settings.database.url == ""
    assert settings.server.port == 8080
    assert [p.protocol for p in settings.providers] == ["medioot", "inbrain", "adgate_receipts"]
    assert all(p.secret or p.url_token for p in settings.providers)
    assert settings.api_keys


def test_dev_config_takes_database_url_from_the_environment() -> None:
    settings = load(ROOT / "ops" / "dev.toml", {"DATABASE_URL": "postgresql://e/d"})
    assert settings.database.url == "postgresql://e/d"


# --- every error is one line ---------------------------------------------------------------------

ONE_LINE_CASES = [
    pytest.param({"bogus": 1}, {}, id="unknown-top-level-key"),
    pytest.param({"server": {"bogus": 1}}, {}, id="unknown-nested-key"),
    pytest.param({"server": {"port": "x"}}, {}, id="wrong-type"),
    pytest.param({"server": {"port": 0}}, {}, id="port-range"),
    pytest.param({"server": {"trusted_proxies": ["x\ny"]}}, {}, id="cidr-with-newline"),
    pytest.param({"providers": [medioot(protocol="nope")]}, {}, id="unknown-protocol"),
    pytest.param({"providers": [medioot(name="bad\nname")]}, {}, id="name-with-newline"),
    pytest.param({"providers": [medioot(), medioot()]}, {}, id="duplicate-provider"),
    pytest.param({"providers": [{"name": "medioot", "protocol": "medioot"}]}, {}, id="no-secret"),
    pytest.param({"providers": [medioot(secret="${UNSET}")]}, {}, id="unset-variable"),
    pytest.param({"providers": [medioot(allowed_ips=["bad"])]}, {}, id="bad-allowed-ip"),
    pytest.param({"api_keys": [api_key(key="short")]}, {}, id="short-key"),
    pytest.param({"api_keys": [api_key(), api_key()]}, {}, id="duplicate-key-name"),
    pytest.param({"api_keys": [api_key(scopes=["write\nall"])]}, {}, id="scope-with-newline"),
    # Keys and variable names can carry a newline too: TOML allows "a\nb" = 1 as a quoted key.
    pytest.param({"bo\ngus": 1}, {}, id="unknown-key-with-newline"),
    pytest.param({"server": {"ho\nst": "${UNSET}"}}, {}, id="unset-variable-under-newline-key"),
    pytest.param({"server": {"host": "${A\nB}"}}, {}, id="variable-name-with-newline"),
]


@pytest.mark.parametrize(("raw", "environ"), ONE_LINE_CASES)
def test_every_error_message_is_one_line(raw: dict[str, Any], environ: dict[str, str]) -> None:
    message = config_error(raw, environ)
    assert message
    assert "\n" not in message
    assert "\r" not in message


def test_quoted_toml_key_with_newline_gives_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "quoted.toml"
    path.write_text('[server]\n"ho\\nst" = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert "\n" not in str(info.value)


def test_a_number_can_come_from_the_environment() -> None:
    from service.settings import parse

    settings = parse({"server": {"port": "${PORT}"}}, {"PORT": "9090"})
    assert settings.server.port == 9090


# --- the chain key and the owner ----------------------------------------------------------------


def test_the_chain_key_is_optional_until_a_command_needs_it() -> None:
    settings = parse({}, {})
    with pytest.raises(ConfigError, match=r"integrity\.chain_key"):
        settings.chain_key()
    key = "k" * 32
    assert parse({"integrity": {"chain_key": key}}, {}).chain_key() == key


def test_a_short_chain_key_is_refused() -> None:
    line = config_error({"integrity": {"chain_key": "k" * 31}})
    assert "integrity.chain_key" in line and "32" in line
    assert "k" * 31 not in line


def test_the_chain_key_comes_from_the_environment() -> None:
    raw = {"integrity": {"chain_key": "${LEDGER_CHAIN_KEY}"}}
    assert parse(raw, {"LEDGER_CHAIN_KEY": "e" * 40}).integrity.chain_key == "e" * 40
    assert "LEDGER_CHAIN_KEY" in config_error(raw)


def test_an_unset_owner_url_variable_means_no_owner() -> None:
    raw = {"database": {"url": "postgresql://app@h/d", "owner_url": "${DATABASE_OWNER_URL}"}}
    assert parse(raw, {}).database.owner_url == ""
    owner = "postgresql://owner@h/d"
    assert parse(raw, {"DATABASE_OWNER_URL": owner}).database.owner_url == owner


def test_an_owner_without_a_runtime_url_is_refused() -> None:
    assert "database.owner_url" in config_error({"database": {"owner_url": "postgresql://o@h/d"}})


def test_the_dev_config_has_a_chain_key() -> None:
    assert len(load(ROOT / "ops" / "dev.toml", {}).chain_key()) >= 32


# --- rotation, public_url ------------------------------------------------------------------------


def test_secrets_replace_secret_newest_first() -> None:
    settings = parse({"providers": [medioot(secrets=["new", "old"])]}, {})
    assert settings.providers[0].secret_list() == ("new", "old")
    assert parse({"providers": [medioot()]}, {}).providers[0].secret_list() == (SECRET,)
    assert parse({"providers": [medioot(secret="", secrets=["a"])]}, {}).providers[
        0
    ].secret_list() == ("a",)


def test_secrets_alone_satisfy_a_protocol_that_needs_a_secret() -> None:
    parse({"providers": [medioot(secret="", secrets=["only"])]}, {})
    assert (
        "providers[0].secret: the profile's signature (kind hash) needs a secret"
        in config_error({"providers": [medioot(secret="", secrets=[])]})
    )


def test_an_empty_secret_in_the_list_is_refused() -> None:
    assert "providers[0].secrets[1]: must not be empty" in config_error(
        {"providers": [medioot(secrets=["a", ""])]}
    )


def test_url_tokens_rotate_and_are_checked_each() -> None:
    adgate = {"name": "adgate", "protocol": "adgate_receipts"}
    tokens = ["token-new-0123456789", "token-old-0123456789"]
    settings = parse({"providers": [{**adgate, "url_tokens": tokens}]}, {})
    assert settings.providers[0].token_list() == tuple(tokens)
    message = config_error({"providers": [{**adgate, "url_tokens": [tokens[0], "short"]}]})
    assert "providers[0].url_tokens[1]: use at least 16 characters" in message
    assert "providers[0].url_token: protocol adgate_receipts needs it" in config_error(
        {"providers": [adgate]}
    )


@pytest.mark.parametrize("url", ["https://ledger.example.com", "http://10.0.0.1:8080", ""])
def test_public_url(url: str) -> None:
    assert parse({"server": {"public_url": url}}, {}).server.public_url == url


@pytest.mark.parametrize("url", ["ledger.example.com", "ftp://x", "https://x?y=1", "https://"])
def test_public_url_must_be_scheme_and_host(url: str) -> None:
    assert "server.public_url: must be http(s)://host" in config_error(
        {"server": {"public_url": url}}
    )


# --- renamed_from and retired_providers ----------------------------------------------------------


def test_renamed_from_names_where_the_wall_s_events_are_recorded() -> None:
    settings = parse({"providers": [medioot(name="new", renamed_from="old")]}, {})
    assert settings.providers[0].recorded_as() == "old"
    assert parse({"providers": [medioot()]}, {}).providers[0].recorded_as() == "medioot"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"providers": [medioot(renamed_from="medioot")]}, "own name"),
        (
            {"providers": [medioot(renamed_from="other"), medioot(name="other")]},
            "another configured provider",
        ),
        (
            {"providers": [medioot(renamed_from="old"), medioot(name="b", renamed_from="old")]},
            "also the renamed_from",
        ),
        ({"providers": [medioot(renamed_from="Old Name")]}, "not a provider name"),
        (
            {"providers": [medioot(renamed_from="reader")], "api_keys": [api_key()]},
            "API key",
        ),
        ({"providers": [medioot()], "retired_providers": ["medioot"]}, "still in use"),
        (
            {"providers": [medioot(renamed_from="old")], "retired_providers": ["old"]},
            "still in use",
        ),
        ({"retired_providers": [""]}, "not a provider name"),
    ],
)
def test_renamed_from_and_retired_providers_are_checked(raw: dict[str, Any], words: str) -> None:
    line = config_error(raw)
    assert words in line
    assert "renamed_from" in line or "retired_providers" in line


def test_pgbouncer_and_listen_url() -> None:
    assert not parse({}, {}).database.pgbouncer
    raw = {
        "database": {
            "url": "postgresql://app@bouncer:6432/d",
            "pgbouncer": True,
            "listen_url": "${DATABASE_LISTEN_URL}",
        }
    }
    assert parse(raw, {}).database.listen_url == ""  # unset: the feed polls
    direct = "postgresql://app@db:5432/d"
    db = parse(raw, {"DATABASE_LISTEN_URL": direct}).database
    assert (db.pgbouncer, db.listen_url) == (True, direct)
    assert "database.listen_url" in config_error({"database": {"listen_url": direct}})
