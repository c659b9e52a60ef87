"""Configuration: a TOML file decoded into msgspec Structs (README, Configuration).

`load(path, environ)` returns a validated `Settings` or raises `ConfigError` whose message is one
line naming the key at fault. Secrets live in these structs; never log them.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from .domain.amounts import AmountError, parse_amount
from .text import one_line

SCOPES = ("read", "spend")

_VAR = re.compile(r"\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem, described in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class Listener(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8081


class Server(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # The walls' listener: the address exposed to the internet.
    host: str = "127.0.0.1"
    port: int = 8080
    # With [server.internal], the walls' listener serves only the postback endpoints and
    # /healthz, and this one the internal API, /metrics and the probes (service/web/listeners.py).
    internal: Listener | None = None
    trusted_proxies: list[str] = []
    max_body_bytes: int = 65536
    # Slow or stalled clients: a body must arrive within read_timeout seconds (else 408), and a
    # connection that sends no complete request for keepalive_timeout seconds is closed.
    read_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    # Seconds one rendering of /metrics is served to every scrape (service/metrics.py). Scrapes
    # come every 15 s or so; bounding renders bounds what a flood of scrapes can cost.
    metrics_max_age: float = 1.0
    # Scheme and host the walls call (e.g. "https://ledger.example.com"): what a wall profile
    # signing the whole URL (signature.over = "url") computes its signature with.
    public_url: str = ""
    # Seconds a SIGTERM (or SIGINT) gives the process to stop: answer what it holds, stop the
    # embedded PostgreSQL, exit. Past it, whatever is left is cut short; the database still stops.
    shutdown_timeout: float = 10.0


class Database(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # `url` is the runtime role the service works as; `owner_url`, when set, the role that owns
    # the tables, used only for migrations, grants and rebuild.
    url: str = ""
    owner_url: str = ""
    data_dir: str = ".data/postgres"
    pool_min_size: int = 1
    pool_max_size: int = 10
    # Seconds a request may wait for the database before it is answered 503.
    timeout: float = 5.0
    # `url` goes through PgBouncer in transaction pooling: no prepared statement cache, the chain
    # key set in each writing transaction rather than at connect, and no LISTEN through it.
    pgbouncer: bool = False
    # A direct connection (not through PgBouncer) the feed LISTENs on. Without it, with
    # `pgbouncer`, the feed polls its head instead; without `pgbouncer`, it LISTENs on `url`.
    listen_url: str = ""
    # A streaming replica (hot standby) of the database at `url`, as the same runtime role: the
    # read-only API routes and the operator pages read there (README, Read replicas). Writes,
    # the global feed, sign-out checks, /readyz and upkeep stay on the primary. Empty: every
    # read goes to `url`. Its pool has pool_min_size to pool_max_size connections too.
    read_url: str = ""


class Writer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Group commit (service/writer.py): how long a busy service lets a batch fill, its size
    # cap, how many batches may be written at once (0: pool_max_size - 2, at least 1), and how
    # many postbacks may wait before new ones are refused with 503 + Retry-After.
    batch_window_ms: float = 2.0
    batch_max: int = 100
    max_inflight: int = 0
    max_queue: int = 2000
    # Refused postbacks (bad signature, malformed...) are logged through a queue of their own,
    # one batch at a time, so that a flood of them cannot delay an authenticated postback. Past
    # this many waiting, a refusal is answered without its postback-log row (counted).
    refusal_queue: int = 1000


class Spend(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Days an Idempotency-Key's first answer is kept and given again to a repeat. After that the
    # key's event still refuses a second effect: the repeat is answered 422.
    idempotency_days: float = 30.0
    # Seconds between two passes of the expiry sweep, which records the release of every hold
    # past its expiry (a hold stops counting at its expiry whether or not the sweep has run).
    sweep_seconds: float = 1.0


class Ui(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Hours an operator page session lasts from sign-in; then the key is asked for again.
    session_hours: float = 8.0


class PostbackLog(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Days the postback log keeps a postback (events are the ledger and are kept for good). The
    # log is partitioned by day: a whole day is dropped once all of it is older than this, so a
    # row is kept from retention_days to a day more.
    retention_days: int = 90


class Integrity(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # The key of the events' HMAC chain and of checkpoints; never stored in the database.
    chain_key: str = ""


CHAIN_KEY_MIN = 32


class Provider(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    protocol: str
    secret: str = ""
    # Rotation: every secret (or URL token) listed is accepted, newest first; when given, the
    # list replaces `secret` (`url_token`).
    secrets: list[str] = []
    url_token: str = ""
    url_tokens: list[str] = []
    allowed_ips: list[str] = []
    # The largest amount one postback may carry (a string holding an exact decimal, or an
    # integer); above it the postback is refused, so a captured URL cannot become any sum.
    max_amount: str | int | None = None
    # A wall profile (service/providers/profile.py): the whole profile for protocol "custom",
    # else overrides of the built-in profile's keys (tables merge key by key).
    profile: dict[str, Any] | None = None
    # The name this wall had before (README, Renaming a provider). Events are keyed by
    # (provider, key), so a wall renamed without this would have its old transactions credited
    # again under the new name. With it, the wall's events go on being recorded under the old
    # name: duplicates, reversals, receipt offers and signatures carry over unchanged.
    renamed_from: str = ""

    def recorded_as(self) -> str:
        """The provider name this wall's events are recorded under."""
        return self.renamed_from or self.name

    def secret_list(self) -> tuple[str, ...]:
        """The secrets a postback may be signed with, newest first."""
        return tuple(self.secrets) if self.secrets else ((self.secret,) if self.secret else ())

    def token_list(self) -> tuple[str, ...]:
        """The URL tokens a postback may carry, newest first."""
        if self.url_tokens:
            return tuple(self.url_tokens)
        return (self.url_token,) if self.url_token else ()

    def amount_limit(self) -> Decimal | None:
        """`max_amount` as an exact decimal (checked by `_validate`)."""
        return None if self.max_amount is None else parse_amount(str(self.max_amount))


class ApiKey(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    key: str
    scopes: list[str] = []


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    server: Server = Server()
    database: Database = Database()
    writer: Writer = Writer()
    spend: Spend = Spend()
    ui: Ui = Ui()
    postback_log: PostbackLog = PostbackLog()
    integrity: Integrity = Integrity()
    providers: list[Provider] = []
    api_keys: list[ApiKey] = []
    # Names of walls removed for good whose events stay in the log: start-up then does not
    # take a new provider for one of them renamed (service/renames.py).
    retired_providers: list[str] = []

    def chain_key(self) -> str:
        """The chain key, which serve, verify, rebuild and checkpoint cannot work without."""
        if not self.integrity.chain_key:
            raise ConfigError(
                "config: integrity.chain_key: not set; serve, verify, rebuild and checkpoint"
                f" need it (at least {CHAIN_KEY_MIN} characters)"
            )
        return self.integrity.chain_key

    def provider(self, name: str) -> Provider | None:
        for provider in self.providers:
            if provider.name == name:
                return provider
        return None


def load(path: str | Path, environ: Mapping[str, str]) -> Settings:
    """Read, expand and validate the TOML file at `path`; `DATABASE_URL` in `environ` wins."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse(raw, environ)


def parse(raw: dict[str, Any], environ: Mapping[str, str]) -> Settings:
    expanded = _expand(raw, environ, "")
    if environ.get("DATABASE_URL"):
        expanded.setdefault("database", {})
        if isinstance(expanded["database"], dict):
            expanded["database"]["url"] = environ["DATABASE_URL"]
    try:
        # Not strict: `port = "${PORT}"` expands to a string and must still become a number.
        settings = msgspec.convert(expanded, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config: {_describe(str(exc))}") from None
    _validate(settings)
    return settings


def _expand(value: Any, environ: Mapping[str, str], where: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, environ, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        return _VAR.sub(lambda m: _lookup(m.group(1), environ, where), value)
    return value


def _lookup(name: str, environ: Mapping[str, str], where: str) -> str:
    if not _VAR_NAME.fullmatch(name):
        raise ConfigError(f"config: {where}: '${{{name}}}' is not a valid variable name")
    if name in environ:
        return environ[name]
    if where in ("database.url", "database.owner_url", "database.listen_url", "database.read_url"):
        return ""
    raise ConfigError(f"config: {where}: environment variable {name} is not set")


def _describe(message: str) -> str:
    # msgspec says "Object contains unknown field `x` - at `$.server`"; name the key TOML-style.
    text, _, at = message.partition(" - at `")
    path = at.rstrip("`").removeprefix("$").lstrip(".")
    return f"{path}: {text}" if path else text


def _validate(settings: Settings) -> None:
    server = settings.server
    if not 0 < server.port < 65536:
        raise ConfigError(f"config: server.port: {server.port} is not a TCP port (1-65535)")
    if server.internal is not None:
        if not 0 < server.internal.port < 65536:
            raise ConfigError(
                f"config: server.internal.port: {server.internal.port} is not a TCP port (1-65535)"
            )
        if server.internal.port == server.port:
            # The listener a request came in on is told by its local port.
            raise ConfigError("config: server.internal.port: must differ from server.port")
    if not 0 <= server.metrics_max_age <= 60:
        raise ConfigError("config: server.metrics_max_age: must be from 0 to 60 seconds")
    if not (0 < server.read_timeout <= 300 and 0 < server.keepalive_timeout <= 3600):
        raise ConfigError("config: server.read_timeout/keepalive_timeout: must be positive seconds")
    if not 0 < server.shutdown_timeout <= 300:
        raise ConfigError(
            "config: server.shutdown_timeout: must be from 0 (excluded) to 300 seconds"
        )
    if server.public_url and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", server.public_url):
        raise ConfigError(
            "config: server.public_url: must be http(s)://host[:port], e.g."
            " https://ledger.example.com"
        )
    if server.max_body_bytes < 1:
        raise ConfigError("config: server.max_body_bytes: must be a positive number of bytes")
    for i, cidr in enumerate(server.trusted_proxies):
        _network(cidr, f"server.trusted_proxies[{i}]")

    database = settings.database
    if not 0 <= database.pool_min_size <= database.pool_max_size or database.pool_max_size < 1:
        raise ConfigError(
            "config: database.pool_min_size/pool_max_size: need 0 <= min <= max, max >= 1"
        )
    if database.timeout <= 0:
        raise ConfigError("config: database.timeout: must be a positive number of seconds")
    if database.owner_url and not database.url:
        raise ConfigError(
            "config: database.owner_url: needs database.url (the embedded server makes its own"
            " runtime role)"
        )
    if database.listen_url and not database.url:
        raise ConfigError(
            "config: database.listen_url: needs database.url (the embedded server is listened"
            " to directly)"
        )
    if database.read_url and not database.url:
        raise ConfigError(
            "config: database.read_url: needs database.url (a replica of the embedded server is"
            " not supported)"
        )
    key = settings.integrity.chain_key
    if key and len(key) < CHAIN_KEY_MIN:
        raise ConfigError(
            f"config: integrity.chain_key: must be at least {CHAIN_KEY_MIN} characters"
        )

    writer = settings.writer
    if not 0 <= writer.batch_window_ms <= 1000:
        raise ConfigError("config: writer.batch_window_ms: must be from 0 to 1000")
    if (
        writer.batch_max < 1
        or writer.max_inflight < 0
        or writer.max_queue < 1
        or writer.refusal_queue < 1
    ):
        raise ConfigError(
            "config: writer: batch_max, max_queue and refusal_queue must be at least 1,"
            " max_inflight at least 0"
        )

    seen: set[str] = set()
    for i, p in enumerate(settings.providers):
        where = f"providers[{i}]"
        if not _PROVIDER_NAME.fullmatch(p.name):
            raise ConfigError(
                f"config: {where}.name: {p.name!r} must be lowercase letters, digits, '-' or '_'"
            )
        if p.name in seen:
            raise ConfigError(f"config: {where}.name: provider {p.name!r} is defined twice")
        seen.add(p.name)
        # The registry and the profiles import this module.
        from .providers.profile import check_provider
        from .providers.registry import PROTOCOLS, protocol_names

        if p.protocol not in protocol_names():
            raise ConfigError(
                f"config: {where}.protocol: {p.protocol!r} is not one of"
                f" {', '.join(protocol_names())}"
            )
        for j, secret in enumerate(p.secrets):
            if not secret:
                raise ConfigError(f"config: {where}.secrets[{j}]: must not be empty")
        for j, token in enumerate(p.url_tokens):
            _token(token, f"{where}.url_tokens[{j}]")
        if p.url_token:
            _token(p.url_token, f"{where}.url_token")
        if p.protocol in PROTOCOLS:
            if p.profile is not None:
                raise ConfigError(
                    f"config: {where}.profile: protocol {p.protocol} is not a wall profile"
                )
            for needed in PROTOCOLS[p.protocol].REQUIRED_SETTINGS:
                if not (p.secret_list() if needed == "secret" else p.token_list()):
                    raise ConfigError(f"config: {where}.{needed}: protocol {p.protocol} needs it")
        else:
            check_provider(p, server, where)
        for j, cidr in enumerate(p.allowed_ips):
            _network(cidr, f"{where}.allowed_ips[{j}]")
        if p.max_amount is not None:
            try:
                p.amount_limit()
            except AmountError as exc:
                raise ConfigError(f"config: {where}.max_amount: {exc}") from None

    names: set[str] = set()
    key_owners: dict[str, str] = {}
    for i, k in enumerate(settings.api_keys):
        where = f"api_keys[{i}]"
        if not k.name or k.name in names:
            raise ConfigError(f"config: {where}.name: must be present and unique")
        names.add(k.name)
        if len(k.key) < 8:
            raise ConfigError(f"config: {where}.key: must be at least 8 characters")
        if k.key in key_owners:
            # Two names for one key: the log and the scope check could name the wrong caller.
            raise ConfigError(
                f"config: {where}.key: api key {k.name!r} has the same key as"
                f" {key_owners[k.key]!r}; each key must be unique"
            )
        key_owners[k.key] = k.name
        for scope in k.scopes:
            if scope not in SCOPES:
                raise ConfigError(
                    f"config: {where}.scopes: {scope!r} is not one of {', '.join(SCOPES)}"
                )
        if "spend" in k.scopes:
            # A spending key's name is the `provider` of the events it makes.
            if not _PROVIDER_NAME.fullmatch(k.name):
                raise ConfigError(
                    f"config: {where}.name: {k.name!r}: a key with scope spend needs a name of"
                    " lowercase letters, digits, '-' or '_' (its events carry it)"
                )
            if k.name in seen:
                raise ConfigError(
                    f"config: {where}.name: {k.name!r} is also a provider's name; a key with"
                    " scope spend records events under its name, so the two must differ"
                )

    _validate_names(settings, names)

    spend = settings.spend
    if not 0 < spend.idempotency_days <= 3650:
        raise ConfigError("config: spend.idempotency_days: must be from 0 (excluded) to 3650")
    if not 0 < spend.sweep_seconds <= 3600:
        raise ConfigError("config: spend.sweep_seconds: must be from 0 (excluded) to 3600")
    if not 1 <= settings.postback_log.retention_days <= 3650:
        raise ConfigError("config: postback_log.retention_days: must be from 1 to 3650")
    if not 0 < settings.ui.session_hours <= 168:
        raise ConfigError("config: ui.session_hours: must be from 0 (excluded) to 168")


def _validate_names(settings: Settings, key_names: set[str]) -> None:
    """`renamed_from` and `retired_providers`: names events were recorded under, which no
    configured provider or API key may take again."""
    providers = {p.name for p in settings.providers}
    taken: dict[str, str] = {}
    for i, p in enumerate(settings.providers):
        if not p.renamed_from:
            continue
        where = f"providers[{i}].renamed_from"
        old = p.renamed_from
        if not _PROVIDER_NAME.fullmatch(old):
            raise ConfigError(f"config: {where}: {old!r} is not a provider name")
        if old == p.name:
            raise ConfigError(f"config: {where}: {old!r} is the provider's own name")
        if old in providers:
            raise ConfigError(
                f"config: {where}: {old!r} is another configured provider; a wall renamed no"
                " longer has its old name"
            )
        if old in key_names:
            raise ConfigError(f"config: {where}: {old!r} is an API key's name")
        if old in taken:
            raise ConfigError(
                f"config: {where}: {old!r} is also the renamed_from of provider {taken[old]!r}"
            )
        taken[old] = p.name
    for i, name in enumerate(settings.retired_providers):
        where = f"retired_providers[{i}]"
        if not _PROVIDER_NAME.fullmatch(name):
            raise ConfigError(f"config: {where}: {name!r} is not a provider name")
        if name in providers or name in taken:
            raise ConfigError(
                f"config: {where}: {name!r} is still in use by provider"
                f" {taken.get(name, name)!r}; a retired name is one no wall has any more"
            )


def _token(token: str, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,}", token):
        raise ConfigError(f"config: {where}: use at least 16 characters of A-Z a-z 0-9 - _")


def _network(text: str, where: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"config: {where}: {text!r} is not an IP address or CIDR") from None


def networks(cidrs: list[str]) -> tuple[Network, ...]:
    """The parsed form of a list already checked by `_validate`."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
