"""The middleware every request goes through: request id and access line, the listener's
paths, API authentication, error translation."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from .. import keys, live, logs
from ..db import Unavailable
from ..logs import log
from . import listeners
from .auth import API_KEY, Handler, required_scope

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class ApiError(Exception):
    """A caller's mistake (or the database's absence), answered as JSON by `errors`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class ErrorBody(msgspec.Struct):
    error: str
    detail: str


_encode = msgspec.json.Encoder().encode


def error_body(code: str, detail: str) -> bytes:
    return _encode(ErrorBody(code, detail))


def json_error(status: int, code: str, detail: str) -> web.Response:
    return web.Response(
        status=status, body=error_body(code, detail), content_type="application/json"
    )


def _route(request: web.Request) -> str:
    # The route template, never the raw path: a postback path can carry a URL token.
    resource = request.match_info.route.resource
    if resource is not None:
        return resource.canonical
    return "/".join(request.path.split("/")[:2]) + "/(unmatched)"


# What a handler adds to its request's access line (a postback: its wall, outcome, detail...).
ACCESS = web.RequestKey("access", dict[str, Any])
REQUEST_ID = web.RequestKey("request_id", str)


def handling(internal_port: int | None) -> Middleware:
    """The one middleware every request goes through, in this order:

    1. its request id (the caller's X-Request-Id when it is safe to log, else a random one),
       bound to every log line of the request and sent back in X-Request-Id;
    2. the configuration it is served with, pinned (a reload meanwhile does not change it);
    3. with two listeners (`internal_port`), a plain 404 for a path its listener does not
       serve (listeners.py), before authentication, so that an API path on the walls'
       listener does not answer 401 and say the route exists;
    4. under /v1/, the API key and its scope (`authenticate`);
    5. the caller's mistakes and the database's absence as JSON (`translate`);
    6. one access line when it is answered, with its status and time.

    One middleware rather than one per step: each step is a few lines, while each middleware
    costs aiohttp a wrapper and a coroutine per request."""

    @web.middleware
    async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        incoming = request.headers.get("X-Request-Id", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
        logs.begin_request(request_id)
        request[REQUEST_ID] = request_id
        live.pin(request, request.app[keys.CONFIG])
        access: dict[str, Any] = {}
        request[ACCESS] = access
        status = 500
        try:
            if internal_port is not None and not listeners.serves(request, internal_port):
                raise web.HTTPNotFound()
            try:
                authenticate(request, access)
                response = await handler(request)
            except Exception as exc:
                response = translate(request, exc)
            status = response.status
            response.headers["X-Request-Id"] = request_id
            return response
        except web.HTTPException as exc:  # aiohttp's own answers (404, 405 outside /v1/)
            status = exc.status
            exc.headers["X-Request-Id"] = request_id
            raise
        finally:
            logs.access(
                request_id,
                {
                    "method": request.method,
                    "route": _route(request),
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                    **access,
                },
            )

    return handle


def translate(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to what a handler raised: an `ApiError` or an unreachable database as JSON,
    aiohttp's 4xx as JSON under /v1/ and on the probes (re-raised elsewhere), anything else a
    logged 500."""
    if isinstance(exc, ApiError):
        response = json_error(exc.status, exc.code, exc.detail)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="postback-ledger"'
        return response
    if isinstance(exc, Unavailable):
        log.warning("database unavailable", error=str(exc))
        return json_error(503, "database_unavailable", "the database is not answering; retry later")
    if isinstance(exc, web.HTTPException):
        api = request.path.startswith("/v1/") or request.path in ("/healthz", "/readyz")
        if exc.status < 400 or not api:
            raise exc
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "bad_request"
        )
        return json_error(exc.status, code, exc.reason)
    log.error("unhandled error", exc_info=exc)
    return json_error(500, "internal_error", "unexpected error; see the service log")


def authenticate(request: web.Request, access: dict[str, Any]) -> None:
    """Under /v1/, and for any handler marked with a scope: the caller's API key must be known
    and hold the scope (raises ApiError); its name goes on the access line and in
    `request[API_KEY]`."""
    scope = required_scope(request.match_info.handler)
    if scope is None and not request.path.startswith("/v1/"):
        return
    # Under /v1/ even an unknown route needs a valid key: which routes exist is not public.
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api key>")
    key = live.of(request).api_keys.find(token.strip())
    if key is None:
        raise ApiError(401, "unauthorized", "unknown API key")
    if scope is not None and scope not in key.scopes:
        raise ApiError(403, "forbidden", f"API key {key.name} lacks scope {scope}")
    access["api_key"] = key.name
    request[API_KEY] = key.name
