"""Operator page sessions (README, Operator pages): sign in with an API key holding `read`.

A session is a cookie signed with itsdangerous (HMAC-SHA256, with the time it was issued) under
a secret derived from the API key it was opened with (`auth.Key.session_secret`). So any
instance checks it with nothing stored and no secret of its own, it lasts `ui.session_hours`,
and it ends at once when its key is removed from the configuration or loses `read`. The cookie
names the key, never holds it: HttpOnly, SameSite=Strict, Path=/ui/, Secure over https.
Signing out records the session's id until it would have expired (`db/sessions.py`), so a copy
of the cookie does not outlive the sign-out.

Forms that change something carry a token the page was rendered with: the session's own
`csrf` for sign-out; for sign-in, where there is no session yet, a random value also set as a
short-lived cookie (double submit). A request whose Origin is another site is refused too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from itsdangerous import BadData, URLSafeTimedSerializer

from .. import keys, live, metrics
from ..db import sessions
from ..logs import log
from ..providers.base import from_trusted_proxy
from .auth import Key

COOKIE = "ledger_session"
SIGN_IN_COOKIE = "ledger_sign_in"  # the sign-in form's token, before a session exists
SIGN_IN_SECONDS = 3600  # how long a sign-in form may wait to be sent
PATH = "/ui/"
_SALT = "operator-session"
_MAX_COOKIE = 1024
_MAX_KEY = 1024


@dataclass(frozen=True, slots=True)
class Session:
    key_name: str
    session_id: str
    csrf: str  # what this session's forms carry (sign-out)
    expires_at: dt.datetime


def _serializer(secret: bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        secret, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256}
    )


# Reads a cookie's payload before its key is known (which key signed it is in the payload);
# nothing read this way is trusted until the key's serializer has checked the signature.
_UNVERIFIED = _serializer(b"")


def _lifetime(request: web.Request) -> dt.timedelta:
    return dt.timedelta(hours=live.of(request).settings.ui.session_hours)


async def current(request: web.Request) -> Session | None:
    """The request's session: signed by a key that still exists and holds `read`, not expired,
    not signed out. None otherwise."""
    raw = request.cookies.get(COOKIE, "")
    if not raw or len(raw) > _MAX_COOKIE:
        return None
    _, payload = _UNVERIFIED.loads_unsafe(raw)
    if not _well_formed(payload):
        return None
    key = live.of(request).api_keys.by_name(payload["k"])
    if key is None or "read" not in key.scopes:
        return None
    lifetime = _lifetime(request)
    try:
        checked, issued = _serializer(key.session_secret).loads(
            raw, max_age=int(lifetime.total_seconds()), return_timestamp=True
        )
    except BadData:
        return None
    if checked != payload:
        return None
    if await sessions.ended(request.app[keys.POOL], payload["s"]):
        return None
    return Session(payload["k"], payload["s"], payload["c"], issued + lifetime)


def _well_formed(payload: Any) -> bool:
    return (
        isinstance(payload, dict)
        and set(payload) == {"k", "s", "c"}
        and all(isinstance(v, str) and 0 < len(v) <= 255 for v in payload.values())
    )


def sign_in_token(request: web.Request, response: web.StreamResponse) -> str:
    """The sign-in form's token: the one its cookie holds, or a new one set on `response`."""
    token = request.cookies.get(SIGN_IN_COOKIE, "")
    if not 20 <= len(token) <= 64:
        token = secrets.token_urlsafe(24)
        _set(request, response, SIGN_IN_COOKIE, token, SIGN_IN_SECONDS)
    return token


def same_origin(request: web.Request) -> bool:
    """False when the browser says the form was sent from another site (Origin header)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser's cross-site form: browsers send Origin with every POST
    return origin == f"{_scheme(request)}://{request.host}"


def sign_in_allowed(request: web.Request, form_token: str) -> bool:
    cookie = request.cookies.get(SIGN_IN_COOKIE, "")
    return (
        same_origin(request)
        and bool(cookie)
        and hmac.compare_digest(cookie.encode(), form_token.encode())
    )


def key_for_sign_in(request: web.Request, presented: str) -> Key | None:
    """The key presented, when it may open a session (it holds `read`); counted and logged by
    name, never by value."""
    found = None
    if 0 < len(presented) <= _MAX_KEY:
        found = live.of(request).api_keys.find(presented.strip())
    if found is None or "read" not in found.scopes:
        metrics.OPERATOR_SIGN_INS.labels(outcome="refused").inc()
        log.warning("operator sign-in refused", api_key=found.name if found else None)
        return None
    metrics.OPERATOR_SIGN_INS.labels(outcome="ok").inc()
    log.info("operator signed in", api_key=found.name)
    return found


def open_session(request: web.Request, response: web.StreamResponse, key: Key) -> None:
    payload = {"k": key.name, "s": secrets.token_urlsafe(18), "c": secrets.token_urlsafe(18)}
    value = _serializer(key.session_secret).dumps(payload)
    _set(request, response, COOKIE, value, int(_lifetime(request).total_seconds()))
    response.del_cookie(SIGN_IN_COOKIE, path=PATH)


async def close_session(
    request: web.Request, response: web.StreamResponse, session: Session
) -> None:
    await sessions.end(request.app[keys.POOL], session.session_id, session.expires_at)
    response.del_cookie(COOKIE, path=PATH)
    log.info("operator signed out", api_key=session.key_name)


def sign_out_allowed(request: web.Request, session: Session, form_token: str) -> bool:
    return same_origin(request) and hmac.compare_digest(session.csrf.encode(), form_token.encode())


def _set(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="Strict",
        secure=_scheme(request) == "https",
    )


def _scheme(request: web.Request) -> str:
    """https when the connection is TLS, or when a trusted proxy says the client's was."""
    if request.secure:
        return "https"
    proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
    trusted = from_trusted_proxy(request.remote, live.of(request).walls.trusted_proxies)
    return "https" if proto == "https" and trusted else "http"
