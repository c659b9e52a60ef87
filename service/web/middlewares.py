"""Request id and access log, error translation, and API authentication."""

from __future__ import annotations

import os
import re
import time

import msgspec
import structlog
from aiohttp import web

from .. import keys, live
from ..db import Unavailable
from ..logs import log
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


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    # The whole request is served with the configuration current now, even if a reload
    # (SIGHUP) replaces it before the answer.
    live.pin(request, request.app[keys.CONFIG])
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:  # aiohttp's own answers (404, 405 outside /v1/)
        status = exc.status
        exc.headers["X-Request-Id"] = request_id
        raise
    finally:
        log.info(
            "request",
            method=request.method,
            route=_route(request),
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    api = request.path.startswith("/v1/") or request.path in ("/healthz", "/readyz")
    try:
        return await handler(request)
    except ApiError as exc:
        response = json_error(exc.status, exc.code, exc.detail)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="postback-ledger"'
        return response
    except Unavailable as exc:
        log.warning("database unavailable", error=str(exc))
        return json_error(503, "database_unavailable", "the database is not answering; retry later")
    except web.HTTPException as exc:
        if exc.status < 400 or not api:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "bad_request"
        )
        return json_error(exc.status, code, exc.reason)
    except Exception:
        log.exception("unhandled error")
        return json_error(500, "internal_error", "unexpected error; see the service log")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    scope = required_scope(request.match_info.handler)
    if scope is None and not request.path.startswith("/v1/"):
        return await handler(request)
    # Under /v1/ even an unknown route needs a valid key: which routes exist is not public.
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api key>")
    key = live.of(request).api_keys.find(token.strip())
    if key is None:
        raise ApiError(401, "unauthorized", "unknown API key")
    if scope is not None and scope not in key.scopes:
        raise ApiError(403, "forbidden", f"API key {key.name} lacks scope {scope}")
    structlog.contextvars.bind_contextvars(api_key=key.name)
    request[API_KEY] = key.name
    return await handler(request)
