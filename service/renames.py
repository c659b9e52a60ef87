"""Start-up check of the providers' names against the event log (README, Renaming a provider).

Events are keyed by (provider, key). A wall renamed in the configuration without `renamed_from`
would have its events recorded under the new name, where none of the old keys exist: every old
transaction the wall sends again would be credited a second time, and its reversals would find
no credit. So serve and migrate refuse to start when the log holds events under a name that is
neither configured, nor a renamed provider's old name, nor an API key's, nor retired, while a
configured provider has no events yet: that is what a rename looks like.
"""

from __future__ import annotations

import asyncpg

from .db import connection, translated
from .logs import log
from .settings import ConfigError, Settings

# Every distinct provider of the log, one index probe each (a loose scan of the unique index
# on (provider, key)), not a scan of the whole log.
_PROVIDERS = """
WITH RECURSIVE p(name) AS (
    (SELECT provider FROM events ORDER BY provider LIMIT 1)
    UNION ALL
    SELECT (SELECT provider FROM events WHERE provider > p.name ORDER BY provider LIMIT 1)
    FROM p WHERE p.name IS NOT NULL
)
SELECT name FROM p WHERE name IS NOT NULL
"""


async def recorded_providers(conn: asyncpg.Connection) -> set[str]:
    """The provider names the event log holds events under."""
    with translated():
        return {r["name"] for r in await conn.fetch(_PROVIDERS)}


def problem(settings: Settings, recorded: set[str]) -> str:
    """One line saying why the configuration cannot serve this log, or ""."""
    for p in settings.providers:
        if p.renamed_from and p.name in recorded:
            return (
                f"config: providers: {p.name!r} has renamed_from = {p.renamed_from!r}, but the"
                f" log already holds events under {p.name!r}, which would no longer be found:"
                " remove renamed_from"
            )
    known = (
        {p.recorded_as() for p in settings.providers}
        | {p.name for p in settings.providers}
        | {k.name for k in settings.api_keys}
        | set(settings.retired_providers)
    )
    vanished = sorted(recorded - known)
    empty = [p.name for p in settings.providers if p.recorded_as() not in recorded]
    if not vanished or not empty:
        return ""
    old, new = vanished[0], empty[0]
    return (
        f"config: providers: the log holds events of {old!r}, which is no configured provider,"
        f' and {new!r} has none: if {new!r} is {old!r} renamed, set renamed_from = "{old}" on'
        f" it (or its old transactions are credited again); if {old!r} is gone for good, add it"
        " to retired_providers"
    )


async def check(dsn: str, settings: Settings, *, wait: float = 0.0) -> None:
    """Raise ConfigError when the configured names do not fit the log's (see `problem`)."""
    conn = await connection.connect(dsn, wait=wait)
    try:
        recorded = await recorded_providers(conn)
    finally:
        await conn.close()
    line = problem(settings, recorded)
    if line:
        raise ConfigError(line)
    known = {p.recorded_as() for p in settings.providers} | {k.name for k in settings.api_keys}
    unconfigured = sorted(recorded - known - set(settings.retired_providers))
    if unconfigured:
        log.warning(
            "the event log holds events of providers that are not configured; list them in"
            " retired_providers if they are gone for good",
            providers=unconfigured,
        )
