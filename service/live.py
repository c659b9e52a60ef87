"""The configuration requests are served with, and its reload on SIGHUP.

What a reload changes: the providers (secrets, URL tokens, allowed addresses, amount limits,
profiles), the API keys, `server.trusted_proxies` and `server.public_url` (what a wall profile
signing the whole URL checks against). They are read again from the same file, checked as at
start-up, and put in place in one assignment: a request keeps the configuration it started with
(`request_context` pins it, `of(request)` reads it), the next one gets the new one. A file that
does not load is refused with one log line and the running configuration stays. Everything else
(the database, the listeners, the workers, the writer's limits...) is only read at start-up: a
change there is logged as needing a restart, and the running value stays.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import asyncpg
import msgspec
from aiohttp import web

from . import metrics, renames
from .db import Unavailable
from .logs import log
from .settings import ConfigError, Settings, load
from .text import one_line
from .web.auth import ApiKeys
from .web.walls import Walls

# Of [server], what a reload changes; every other section but the providers and keys needs a
# restart.
SERVER_RELOADED = frozenset({"trusted_proxies", "public_url"})
RELOADED = frozenset({"providers", "api_keys", "retired_providers"})


@dataclass(frozen=True, slots=True)
class Config:
    settings: Settings
    walls: Walls
    api_keys: ApiKeys

    @classmethod
    def of(cls, settings: Settings) -> Config:
        return cls(settings, Walls.from_settings(settings), ApiKeys(settings.api_keys))


def initialise_metrics(settings: Settings) -> None:
    """Every provider's series at zero (a reload adds the new providers')."""
    metrics.initialise(
        (p.name for p in settings.providers),
        ((p.name, max(len(p.secret_list()), len(p.token_list()))) for p in settings.providers),
    )


class LiveConfig:
    """The current `Config`, replaced whole by `reload`."""

    def __init__(self, settings: Settings, path: str | None = None) -> None:
        self.current = Config.of(settings)
        self.path = path  # the file to read again; None: nothing to reload from

    async def reload(
        self, pool: asyncpg.Pool | None = None, environ: Mapping[str, str] | None = None
    ) -> bool:
        """Read the file again and put what may change in place; False when it was refused.
        With `pool`, the new providers are checked against the event log's names as at
        start-up (a wall renamed without renamed_from is refused)."""
        if self.path is None:
            log.error("configuration not reloaded: the service was not started from a file")
            return False
        old = self.current.settings
        try:
            new = load(self.path, os.environ if environ is None else environ)
            merged = reloaded(old, new)
            config = Config.of(merged)
            if pool is not None:
                await _check_names(pool, merged)
        except ConfigError as exc:
            log.error("configuration not reloaded", path=self.path, error=str(exc))
            return False
        except Exception as exc:  # a wall that cannot be built: refused the same way
            log.error("configuration not reloaded", path=self.path, error=one_line(repr(exc)))
            return False
        initialise_metrics(merged)
        self.current = config  # one assignment: a request sees the old or the new, never a mix
        stale = list(needs_restart(old, new))
        if stale:
            log.warning("needs a restart", path=self.path, settings=stale)
        log.info(
            "configuration reloaded",
            path=self.path,
            providers=[p.name for p in merged.providers],
            api_keys=[k.name for k in merged.api_keys],
        )
        return True


async def _check_names(pool: asyncpg.Pool, settings: Settings) -> None:
    try:
        async with pool.acquire() as conn:
            recorded = await renames.recorded_providers(conn)
    except Unavailable as exc:
        raise ConfigError(f"the provider names cannot be checked against the log: {exc}") from None
    line = renames.problem(settings, recorded)
    if line:
        raise ConfigError(line)


def reloaded(old: Settings, new: Settings) -> Settings:
    """`old` with what a reload changes taken from `new`."""
    server = msgspec.structs.replace(
        old.server, **{name: getattr(new.server, name) for name in SERVER_RELOADED}
    )
    return msgspec.structs.replace(
        old,
        server=server,
        providers=new.providers,
        api_keys=new.api_keys,
        retired_providers=new.retired_providers,
    )


def needs_restart(old: Settings, new: Settings) -> Iterator[str]:
    """The settings that differ between `old` and `new` and that only a restart applies."""
    for section in old.__struct_fields__:
        if section in RELOADED:
            continue
        before, after = getattr(old, section), getattr(new, section)
        if before == after:
            continue
        for name in before.__struct_fields__:
            if section == "server" and name in SERVER_RELOADED:
                continue
            if getattr(before, name) != getattr(after, name):
                yield f"{section}.{name}"


REQUEST_CONFIG = web.RequestKey("config", Config)


def pin(request: web.Request, live: LiveConfig) -> None:
    """Serve `request` with the configuration current now, whatever a reload does meanwhile."""
    request[REQUEST_CONFIG] = live.current


def of(request: web.Request) -> Config:
    """The configuration `request` is served with."""
    config = request.get(REQUEST_CONFIG)
    if config is None:
        from . import keys

        config = request[REQUEST_CONFIG] = request.app[keys.CONFIG].current
    return config
