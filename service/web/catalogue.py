"""Every /v1/ operation, and the OpenAPI document made from them (web/openapi.py)."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
from aiohttp import web

from . import api, spend
from .auth import Handler, requires
from .middlewares import ApiError
from .openapi import Operation, document


@requires("read")
async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=_OPENAPI, content_type="application/json")


OPERATIONS: tuple[Operation, ...] = (
    *api.READS,
    *spend.WRITES,
    Operation("/v1/openapi.json", get_openapi, "This document", dict[str, Any]),
)

_OPENAPI = msgspec.json.encode(document(OPERATIONS))
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,64}")


def strict(operation: Operation) -> Handler:
    """The operation's handler, answering 400 to a query parameter its declaration does not
    name, or to one given more than once: a misspelt filter (`user_id` for `user`) must not
    silently answer as if there were none. The declared `Param`s are the only list kept."""
    allowed = tuple(p.name for p in operation.params if p.where == "query")
    takes = (
        f"this route takes {', '.join(allowed)}"
        if allowed
        else "this route takes no query parameter"
    )
    handler = operation.handler

    @functools.wraps(handler)  # keeps the scope the authentication middleware reads
    async def checked(request: web.Request) -> web.StreamResponse:
        query = request.query
        for name in query:
            if name not in allowed:
                # As sent when it is printable ASCII, else escaped: it goes into JSON and logs.
                shown = name if _PRINTABLE.fullmatch(name) else ascii(name[:64])
                raise ApiError(
                    400, "unknown_parameter", f"unknown query parameter {shown}; {takes}"
                )
            if len(query.getall(name)) > 1:
                raise ApiError(
                    400, "repeated_parameter", f"query parameter {name} is given more than once"
                )
        return await handler(request)

    return checked
