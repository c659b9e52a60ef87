"""Bearer keys with scopes for the internal API."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from ..settings import ApiKey

# The name of the API key a /v1/ request authenticated with (set by the authentication
# middleware): the events of a spending request carry it as their provider.
API_KEY = web.RequestKey("api_key", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)


def requires(scope: str) -> Callable[[H], H]:
    """Mark a /v1/ handler with the scope its caller's key must have."""

    def mark(handler: H) -> H:
        handler.scope = scope  # type: ignore[attr-defined]  # read back by the auth middleware
        return handler

    return mark


def required_scope(handler: object) -> str | None:
    scope = getattr(handler, "scope", None)
    return scope if isinstance(scope, str) else None


_SESSION_CONTEXT = b"postback-ledger operator page session"


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    digest: bytes
    scopes: frozenset[str]
    # What signs the operator page sessions opened with this key (web/session.py): derived
    # from the key, so every instance agrees without a secret of its own, and a session ends
    # when its key is replaced or removed.
    session_secret: bytes


class ApiKeys:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [
            Key(
                k.name,
                hashlib.sha256(k.key.encode()).digest(),
                frozenset(k.scopes),
                hmac.new(k.key.encode(), _SESSION_CONTEXT, hashlib.sha256).digest(),
            )
            for k in keys
        ]
        self._by_name = {k.name: k for k in self._keys}

    def by_name(self, name: str) -> Key | None:
        return self._by_name.get(name)

    def find(self, presented: str) -> Key | None:
        # Compare digests against every key, without stopping early, so the time taken says
        # nothing about which key (or how much of one) was right.
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found
