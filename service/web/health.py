"""Unauthenticated probes: /healthz (the process), /readyz (the database), /metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .. import keys
from .. import metrics as ledger_metrics
from ..db.connection import ping


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    timeout = min(request.app[keys.SETTINGS].database.timeout, 2.0)
    up = await ping(request.app[keys.POOL], timeout)
    ledger_metrics.DATABASE_UP.set(1 if up else 0)
    if up:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "database_unavailable"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=await request.app[keys.EXPOSITION].text())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
