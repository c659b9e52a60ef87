"""The baseline for wallet reads: a bare aiohttp server, one handler, a fixed JSON body.

It has the wallet route's shape (`/v1/wallets/{user_id}`) and a body of the same size as the
service's answer, but no middleware, no authentication, no database and no logging: what the
same client gets from aiohttp alone on this machine. It runs on the event loop the service
picks (uvloop when installed, unless LEDGER_EVENT_LOOP=asyncio), so only the handler differs.

    python ops/bench/bare_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from service.app import new_event_loop

BODY = (
    b'{"user_id":"user-12345","balance":"1234.50","total_credited":"1234.50",'
    b'"total_reversed":"0","event_count":3,"updated_at":"2025-01-01T00:00:00.000000+00:00"}'
)


async def wallet(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def event_loop() -> asyncio.AbstractEventLoop:
    """The loop `python -m service serve` runs on, so only the handler differs."""
    return new_event_loop()


def main() -> None:
    app = web.Application()
    app.router.add_get("/v1/wallets/{user_id}", wallet)
    app.router.add_get("/readyz", ready)
    web.run_app(
        app,
        loop=event_loop(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
