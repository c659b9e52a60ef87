"""The application factory and its resources."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from aiohttp import web

from . import keys, live, metrics, renames, upkeep
from .db import REFUSED_ERRORS, UNAVAILABLE_ERRORS, Unavailable, connection
from .domain.chain import ChainKey
from .embedded import DATABASE, RUNTIME_ROLE, EmbeddedPostgres
from .feed import FeedSignal
from .logs import log
from .settings import Settings
from .web import middlewares
from .web.routes import add_routes
from .writer import Writer

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed: the same asyncio API, a good deal less CPU per request.
    LEDGER_EVENT_LOOP=asyncio chooses the standard loop (to compare, or to debug)."""
    if os.environ.get("LEDGER_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


@dataclass(frozen=True)
class Dsns:
    """Where the service connects. `runtime`: the pool, the writer, the feed, verify and
    checkpoint. `owner`: migrations, grants and rebuild; the same as `runtime` when no owner is
    configured (then the runtime role owns the tables, and can rewrite them)."""

    runtime: str
    owner: str


# While the database does not answer at start-up: how often to try again, and how often to say
# so in the log (the first failure at once, then at most once per WAIT_LOG_EVERY seconds).
RETRY_EVERY = 1.0
WAIT_LOG_EVERY = 10.0


async def until_answering(attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()`, tried again while the database is `Unavailable`, for as long as it takes
    (cancel the task to give up): "waiting for the database" is logged with the error."""
    logged = -math.inf
    while True:
        try:
            return await attempt()
        except Unavailable as exc:
            if time.monotonic() - logged >= WAIT_LOG_EVERY:
                logged = time.monotonic()
                log.warning("waiting for the database", error=str(exc), retry_every=RETRY_EVERY)
        await asyncio.sleep(RETRY_EVERY)


async def _start_embedded(embedded: EmbeddedPostgres) -> str:
    # Its thread cannot be cancelled: when the caller is (SIGTERM during start-up), let the
    # start finish and stop the server again, so that no PostgreSQL outlives the process.
    start = asyncio.ensure_future(asyncio.to_thread(embedded.start))
    try:
        return await asyncio.shield(start)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await start
        await asyncio.to_thread(embedded.stop)
        raise


@contextlib.asynccontextmanager
async def database(
    settings: Settings, *, wait: float | None = 30.0, migrate: bool = True
) -> AsyncIterator[Dsns]:
    """`database.url` (and `owner_url`), or the embedded server started here, with its
    superuser as the owner and `RUNTIME_ROLE` as the runtime role. With `migrate`, schema.sql is
    applied as the owner and the runtime role given its grants; without, nothing is changed.
    `wait`: seconds to wait for the database to answer; None, until it does."""
    embedded, admin_dsn = None, ""
    db = settings.database
    if db.url:
        dsns = Dsns(runtime=db.url, owner=db.owner_url or db.url)
    else:
        embedded = EmbeddedPostgres(db.data_dir)
        admin_dsn = await _start_embedded(embedded)
        log.info("embedded postgresql started", data_dir=str(embedded.data_dir))
        owner = embedded.dsn(DATABASE)
        dsns = Dsns(runtime=connection.with_user(owner, RUNTIME_ROLE), owner=owner)
    try:
        if migrate:
            if embedded is not None:
                await connection.ensure_database(admin_dsn, DATABASE)
            if dsns.owner == dsns.runtime:
                log.warning(
                    "tamper evidence does not hold against the runtime role: database.owner_url"
                    " is not set, so the service works as the role that owns the tables"
                )
            if wait is None:
                await until_answering(lambda: _migrate(dsns, embedded=embedded is not None, wait=0))
            else:
                await _migrate(dsns, embedded=embedded is not None, wait=wait)
            # A renamed wall without renamed_from: refuse (the database answered just now).
            await renames.check(dsns.owner, settings, wait=wait or 0.0)
        yield dsns
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
            log.info("embedded postgresql released", data_dir=str(embedded.data_dir))


async def _migrate(dsns: Dsns, *, embedded: bool, wait: float) -> None:
    if dsns.owner == dsns.runtime:
        problems = await connection.migrate(dsns.owner, wait=wait)
    else:
        role = RUNTIME_ROLE if embedded else await connection.role_of(dsns.runtime, wait=wait)
        problems = await connection.migrate(
            dsns.owner, runtime_role=role, create_role=embedded, wait=wait
        )
    for problem in problems:
        log.warning("tamper evidence does not hold against the runtime role", problem=problem)


def create_app(
    settings: Settings, *, migrate: bool = True, config_path: str | None = None
) -> web.Application:
    """The service; `migrate=False` for a worker whose supervisor has migrated already.
    `config_path`: the file `settings` came from, which a reload (SIGHUP) reads again. Its
    start-up waits for the database for as long as it takes (cancel it to give up)."""
    settings.chain_key()  # refuse to start without one
    internal = settings.server.internal
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[middlewares.handling(None if internal is None else internal.port)],
    )
    app[keys.SETTINGS] = settings
    app[keys.MIGRATE] = migrate
    app[keys.CONFIG] = live.LiveConfig(settings, config_path)
    live.initialise_metrics(settings)
    app[keys.EXPOSITION] = metrics.SharedExposition(settings.server.metrics_max_age)
    app.cleanup_ctx.append(_database)
    app.on_shutdown.append(_end_long_polls)
    add_routes(app)
    return app


PROBE_INTERVAL = 5.0


async def _probe(app: web.Application) -> None:
    """Keep `ledger_database_up` current, so that Prometheus sees an outage with no traffic."""
    db = app[keys.SETTINGS].database
    while True:
        up = await connection.ping(app[keys.POOL], min(db.timeout, 2.0))
        metrics.DATABASE_UP.set(1 if up else 0)
        await asyncio.sleep(PROBE_INTERVAL)


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    db = settings.database
    async with database(settings, migrate=app[keys.MIGRATE], wait=None) as dsns:
        pool = await until_answering(
            lambda: connection.create_pool(
                dsns.runtime,
                min_size=db.pool_min_size,
                max_size=db.pool_max_size,
                wait_limit=db.timeout,
                chain_key=ChainKey(settings.chain_key()),
                pgbouncer=db.pgbouncer,
            )
        )
        app[keys.POOL] = pool
        app[keys.READ_POOL] = read_pool = await _read_pool(settings) if db.read_url else pool
        w = settings.writer
        writer = Writer(
            pool,
            window=w.batch_window_ms / 1000,
            cap=w.batch_max,
            inflight=w.max_inflight or max(1, db.pool_max_size - 2),
            max_queue=w.max_queue,
        )
        app[keys.WRITER] = writer
        writer.start()
        # One batch at a time: refusals never hold more than one of the pool's connections.
        refusals = Writer(
            pool,
            window=w.batch_window_ms / 1000,
            cap=w.batch_max,
            inflight=1,
            max_queue=w.refusal_queue,
        )
        app[keys.REFUSALS] = refusals
        refusals.start()
        # Through PgBouncer, the feed LISTENs on `listen_url` (direct), or polls without one.
        listen = db.listen_url or (None if db.pgbouncer else dsns.runtime)
        app[keys.FEED] = FeedSignal(listen, pool)
        app[keys.FEED].start()
        probe = asyncio.create_task(_probe(app))
        tending = asyncio.create_task(upkeep.run(app))
        try:
            yield
        finally:
            for task in (probe, tending):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await writer.close()  # answer every queued postback before the pool goes
            await refusals.close()
            await app[keys.FEED].stop()
            for each in {read_pool, pool}:
                try:
                    await asyncio.wait_for(each.close(), POOL_CLOSE_LIMIT)
                except TimeoutError:
                    each.terminate()  # a connection stuck on a dead server: do not wait for it


async def _read_pool(settings: Settings) -> asyncpg.Pool:
    """The replica's pool. It opens no connection before the first read (min_size 0): start-up
    never waits for the replica, and while the replica is down its reads are answered 503.
    One look at start-up says in the log what is wrong with it, if anything."""
    db = settings.database
    pool = await connection.create_pool(
        db.read_url, min_size=0, max_size=db.pool_max_size, wait_limit=db.timeout
    )
    try:
        async with asyncio.timeout(min(db.timeout, 2.0)):
            standby = await pool.fetchval("SELECT pg_is_in_recovery()")
    except (Unavailable, *UNAVAILABLE_ERRORS) as exc:  # type: ignore[misc]
        cause = exc.__cause__ if isinstance(exc, Unavailable) else exc
        if isinstance(cause, REFUSED_ERRORS):  # no such database or role, a password refused
            log.error(
                "read replica refused the connection: check database.read_url", error=str(exc)
            )
        else:
            log.warning("read replica not answering: its reads answer 503", error=str(exc))
    else:
        if not standby:
            log.warning("database.read_url is not a standby: reads go to a primary")
    return pool


POOL_CLOSE_LIMIT = 2.0  # seconds stopping gives the pool to close its connections politely


async def _end_long_polls(app: web.Application) -> None:
    """On shutdown, once the listeners are closed: answer every waiting `/v1/events?wait=` now,
    with the cursor it had, instead of keeping the process up for the rest of its wait."""
    feed = app.get(keys.FEED)
    if feed is not None:
        feed.close()
