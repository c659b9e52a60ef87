"""Unauthenticated probes: /healthz (the process), /readyz (the database), /metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .. import keys
from ..db.connection import ping


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    timeout = min(request.app[keys.SETTINGS].database.timeout, 2.0)
    if await ping(request.app[keys.POOL], timeout):
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "database_unavailable"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
