"""Every route of the service."""

from __future__ import annotations

from aiohttp import web

from . import catalogue, health, pages, postbacks


def add_routes(app: web.Application) -> None:
    # With [server.internal], each route is served on the listener whose paths cover it
    # (listeners.WALLS_PATHS, listeners.INTERNAL_PATHS); without it, one listener serves all.

    # Both listeners.
    app.router.add_get("/healthz", health.healthz)

    # The walls' listener, exposed to the internet. A URL token has at least 16 characters, so
    # it is never the literal "reversal" (a wall profile's reversal endpoint), matched first.
    for path in (
        "/postbacks/{name}",
        "/postbacks/{name}/{reversal:reversal}",
        "/postbacks/{name}/{token}",
        "/postbacks/{name}/{token}/{reversal:reversal}",
    ):
        app.router.add_route("GET", path, postbacks.postback)
        app.router.add_route("POST", path, postbacks.postback)

    # The internal listener: the API, metrics, probes (and the operator pages, under /ui/).
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)
    for operation in catalogue.OPERATIONS:
        handler = catalogue.strict(operation)  # unknown or repeated query parameters: 400
        if operation.method == "get":
            app.router.add_get(operation.path, handler)
        else:
            app.router.add_route(operation.method.upper(), operation.path, handler)
    pages.add_routes(app)
