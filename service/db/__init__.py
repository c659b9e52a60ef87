"""Every SQL statement of the service lives in this package.

`connection.py` opens pools and applies the schema, `write.py` is the one write path, `read.py`
answers the API and `verify`. asyncpg errors are translated here: a lost or refused connection is
`Unavailable` (HTTP 503), never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import msgspec

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema.sql"


class Unavailable(Exception):
    """The database could not be reached or could not finish the work; retrying later may help."""


# A server that refuses this role or has no such database (a replica not set up yet, a password
# changed on one side): misconfigured, not the caller's mistake, and waiting will not help.
REFUSED_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)

# A deadlock or serialization failure is transient: the write path retries it, then gives up
# as Unavailable. Everything here means "the database is not answering", not "the input is bad".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # shutdown, starting up, query canceled
    asyncpg.InsufficientResourcesError,  # disk full, too many connections
    asyncpg.TransactionRollbackError,  # deadlock, serialization failure
    # Seen when the server vanishes mid-operation: "cannot switch to state ...; another
    # operation is in progress" from a connection whose last exchange never finished.
    asyncpg.InternalClientError,
    *REFUSED_ERRORS,
)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise Unavailable(f"{type(exc).__name__}: {exc}") from exc


_S = TypeVar("_S", bound=msgspec.Struct)


def struct(kind: type[_S], row: asyncpg.Record) -> _S:
    """A projection's row as the domain's Struct of the same field names."""
    return kind(**{name: row[name] for name in kind.__struct_fields__})
