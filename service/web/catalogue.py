"""Every /v1/ operation, and the OpenAPI document made from them (web/openapi.py)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from . import api, spend
from .auth import requires
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
