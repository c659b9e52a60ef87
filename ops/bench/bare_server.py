"""The baseline for wallet reads: a bare aiohttp + asyncpg program.

One handler on the wallet route (`/v1/wallets/{user_id}`) runs the SELECT the service runs for
a wallet read (`service.db.read._WALLET`, imported, so the two cannot drift) on an asyncpg pool
of the service's default size, and answers the same JSON fields (amounts as exact decimal
strings, encoded with msgspec), but with no middleware, no authentication and no logging: what
the same client gets from aiohttp and asyncpg alone on this machine.

It runs as N processes, as `serve --workers N` does: each binds the same port with SO_REUSEPORT
and has its own event loop (the one the service picks: uvloop when installed, unless
LEDGER_EVENT_LOOP=asyncio) and its own pool. /readyz answers 200 once every process listens,
so that the load generator's connections are spread over all of them.

    python ops/bench/bare_server.py PORT DSN [--workers N] [--pool-size M]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import signal
import sys
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

import asyncpg
import msgspec
from aiohttp import web

from service.app import new_event_loop
from service.db.read import _WALLET
from service.domain.amounts import EXACT, format_amount
from service.settings import Database

HOST = "127.0.0.1"
POOL = web.AppKey("pool", asyncpg.Pool)


class WalletBody(msgspec.Struct):
    """The fields of the service's answer (service.web.api.WalletBody), in its order."""

    user_id: str
    balance: str
    total_credited: str
    total_reversed: str
    total_debited: str
    held: str
    available: str
    event_count: int
    updated_at: dt.datetime


_encode = msgspec.json.Encoder().encode


async def wallet(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(_WALLET, request.match_info["user_id"])
    if row is None:
        return web.Response(status=404, body=b'{"error":"wallet_not_found"}')
    body = WalletBody(
        user_id=row["user_id"],
        balance=format_amount(row["balance"]),
        total_credited=format_amount(row["total_credited"]),
        total_reversed=format_amount(row["total_reversed"]),
        total_debited=format_amount(row["total_debited"]),
        held=format_amount(row["held"]),
        available=format_amount(EXACT.subtract(row["balance"], row["held"])),
        event_count=row["event_count"],
        updated_at=row["updated_at"],
    )
    return web.Response(body=_encode(body), content_type="application/json")


def event_loop() -> asyncio.AbstractEventLoop:
    """The loop `python -m service serve` runs on, so only the handler differs."""
    return new_event_loop()


async def _nothing(conn: asyncpg.Connection) -> None:
    """As the service's pool: nothing is reset when a connection goes back to the pool."""


async def _serve(
    port: int, dsn: str, pool_size: int, listening: Synchronized[int], all_in: Event, n: int
) -> None:
    defaults = Database()
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(defaults.pool_min_size, pool_size),
        max_size=pool_size,
        command_timeout=defaults.timeout,
        timeout=defaults.timeout,
        reset=_nothing,
    )

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok") if all_in.is_set() else web.Response(status=503)

    app = web.Application()
    app[POOL] = pool
    app.router.add_get("/v1/wallets/{user_id}", wallet)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, reuse_port=True).start()
    with listening.get_lock():
        listening.value += 1
        if listening.value == n:
            all_in.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await pool.close()


def _worker(
    port: int, dsn: str, pool_size: int, listening: Synchronized[int], all_in: Event, n: int
) -> None:
    with asyncio.Runner(loop_factory=event_loop) as runner:
        runner.run(_serve(port, dsn, pool_size, listening, all_in, n))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("dsn", help="the database the service reads (as its runtime role)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--pool-size", type=int, help="pool_max_size (default: the service's)")
    args = p.parse_args(argv)
    pool_size = args.pool_size or Database().pool_max_size
    # Forked before any event loop exists: each process makes its own loop and pool.
    ctx = multiprocessing.get_context("fork")
    listening: Synchronized[int] = ctx.Value("i", 0)
    all_in = ctx.Event()
    n = args.workers
    procs = [
        ctx.Process(target=_worker, args=(args.port, args.dsn, pool_size, listening, all_in, n))
        for _ in range(n)
    ]
    for proc in procs:
        proc.start()

    def stop(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: each stops its site and closes its pool

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs)


if __name__ == "__main__":
    sys.exit(main())
