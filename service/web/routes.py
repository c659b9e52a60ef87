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
    app.router.add_get("/v1/wallets/{user_id}", api.get_wallet)
    app.router.add_get("/v1/wallets/{user_id}/events", api.get_wallet_events)
    app.router.add_get("/v1/receipt-offers/{provider}/{upload_offer_id}", api.get_receipt_offer)
    app.router.add_get("/v1/postbacks", api.get_postbacks)
