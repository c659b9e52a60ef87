"""Every route of the service."""

from __future__ import annotations

from aiohttp import web

from . import api, health, postbacks


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)
    for path in ("/postbacks/{name}", "/postbacks/{name}/{token}"):
        app.router.add_route("GET", path, postbacks.postback)
        app.router.add_route("POST", path, postbacks.postback)
    for operation in api.OPERATIONS:
        app.router.add_get(operation.path, operation.handler)
