"""`serve` in one process: start-up in order, SIGTERM within a deadline, SIGHUP reload.

**Start-up.** The listeners are bound first, so a port in use ends the command at once with one
line. While the service waits for its database (the embedded server starting, the schema being
applied, the pool opening), the listeners already answer: /healthz 200, /readyz 503, anything
else 503 with Retry-After, and the log says what it waits for. `serving` is logged once the
service answers for real, with both addresses.

**Stopping.** SIGTERM or SIGINT: the listeners close (new connections are refused), every waiting
`/v1/events?wait=` is answered at once with the cursor it had, requests in progress get the
rest of `server.shutdown_timeout` minus what stopping needs after them (CLEANUP_RESERVE), the
group-commit writer answers every postback it accepted, the pool closes and the embedded
PostgreSQL stops. Should that take longer than `server.shutdown_timeout`, or on a second SIGTERM
or SIGINT, the process stops the embedded PostgreSQL and exits at once (code 1).

**Reload.** SIGHUP reads the configuration file again (service/live.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time

from aiohttp import web

from . import embedded, keys
from .logs import log
from .settings import Settings
from .web.listeners import INTERNAL_PATHS, WALLS_PATHS, covers

EXIT_LISTEN = 3  # a listener could not be bound: a supervisor does not start the worker again
EXIT_FORCED = 1
CLEANUP_RESERVE = 3.0  # seconds of the shutdown timeout kept for the writer, pool and database
READY_FD = "LEDGER_READY_FD"  # a worker writes its pid there once it serves (supervisor.py)
RETRY_AFTER = "5"


class ListenError(Exception):
    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"cannot serve on {where}: {reason}")


def listen(host: str, port: int, *, reuse_port: bool, now: bool = True) -> socket.socket:
    """A TCP socket bound to host:port (with SO_REUSEPORT under `--workers`), listening unless
    `now` is False: a worker listens only once it can answer, for until then the kernel would
    hand it a share of the connections its ready siblings could serve."""
    where = f"{host}:{port}"
    sock = None
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = info[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(info[0][4])
        if now:
            sock.listen(128)
        return sock
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise ListenError(where, str(exc.strerror or exc)) from None


def bind(
    settings: Settings, host: str, port: int, *, reuse_port: bool, now: bool = True
) -> list[socket.socket]:
    """The walls' listener, then the internal one if configured; ListenError if either fails."""
    sockets = [listen(host, port, reuse_port=reuse_port, now=now)]
    internal = settings.server.internal
    if internal is not None:
        try:
            sockets.append(listen(internal.host, internal.port, reuse_port=reuse_port, now=now))
        except ListenError:
            sockets[0].close()
            raise
    return sockets


def budget(total: float, *, worker: bool) -> float:
    """Seconds a process has to stop: a worker leaves its supervisor time to stop the database."""
    return total - supervisor_reserve(total) if worker else total


def supervisor_reserve(total: float) -> float:
    return min(2.0, total / 4)


def drain_time(stop_budget: float) -> float:
    """Seconds requests in progress get once stopping has begun."""
    return max(stop_budget - CLEANUP_RESERVE, stop_budget / 2)


def addresses(settings: Settings, host: str, port: int) -> dict[str, object]:
    internal = settings.server.internal
    return {
        "walls": f"{host}:{port}",
        "internal": None if internal is None else f"{internal.host}:{internal.port}",
    }


def warn_single_listener(settings: Settings, host: str, port: int) -> None:
    if settings.server.internal is None:
        log.warning(
            "no [server.internal] listener: /v1/ and /metrics share the walls' address",
            host=host,
            port=port,
        )


class Watchdog:
    """Ends the process when stopping overruns its deadline, or at once when told to: stops
    the embedded PostgreSQL this process started, then exits with EXIT_FORCED."""

    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    def arm(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self.force, args=("shutdown timeout reached",))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def force(self, why: str) -> None:
        log.warning("stopping now", reason=why)
        try:
            embedded.stop_all()
        finally:
            os._exit(EXIT_FORCED)


def _starting_app(internal_port: int | None) -> web.Application:
    """What the listeners answer until the service is ready."""

    async def answer(request: web.Request) -> web.Response:
        path = request.path
        if internal_port is not None:
            local = request.transport.get_extra_info("sockname") if request.transport else None
            internal = isinstance(local, tuple) and len(local) >= 2 and local[1] == internal_port
            if not covers(INTERNAL_PATHS if internal else WALLS_PATHS, path):
                raise web.HTTPNotFound()
        if path == "/healthz":
            return web.json_response({"status": "ok"})
        if path == "/readyz":
            return web.json_response({"status": "starting", "waiting_for": "database"}, status=503)
        headers = {"Retry-After": RETRY_AFTER}
        if path.startswith("/v1/"):
            body = {"error": "starting", "detail": "the service is starting; retry later"}
            return web.json_response(body, status=503, headers=headers)
        return web.Response(status=503, text="starting; retry later", headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def settle_heap() -> None:
    """Once started: move every object start-up made (modules, configuration, the app) out of
    the cyclic garbage collector's reach. A full collection then walks only what requests
    made since, instead of pausing the event loop for every module's objects now and then,
    which showed up in the tail latency of postbacks."""
    gc.collect()
    gc.freeze()


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    worker: bool = False,
    config_path: str | None = None,
) -> int:
    from .app import new_event_loop

    try:
        sockets = bind(settings, host, port, reuse_port=worker, now=not worker)
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    loop = new_event_loop()
    try:
        return loop.run_until_complete(
            _run(settings, host, port, sockets, worker=worker, config_path=config_path)
        )
    finally:
        for sock in sockets:
            sock.close()
        loop.close()


async def _run(
    settings: Settings,
    host: str,
    port: int,
    sockets: list[socket.socket],
    *,
    worker: bool,
    config_path: str | None,
) -> int:
    from .app import create_app

    loop = asyncio.get_running_loop()
    server = settings.server
    stop_budget = budget(server.shutdown_timeout, worker=worker)
    app = create_app(settings, migrate=not worker, config_path=config_path)
    stopping = asyncio.Event()
    watchdog = Watchdog()
    stop_began = 0.0

    def on_stop(name: str) -> None:
        nonlocal stop_began
        if stopping.is_set():
            watchdog.force(f"second {name}")
        stop_began = time.monotonic()
        log.info("stopping", signal=name, shutdown_timeout=stop_budget)
        stopping.set()
        watchdog.arm(stop_budget)

    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    if worker:
        # Ctrl-C in a terminal reaches the whole process group: the supervisor alone acts on
        # it, and tells its workers with SIGTERM.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
    else:
        loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    reloading: set[asyncio.Task[bool]] = set()  # held until done: a task nobody holds may vanish

    def on_reload() -> None:
        pool = app[keys.POOL] if keys.POOL in app else None  # no pool yet: start-up checks
        task = asyncio.ensure_future(app[keys.CONFIG].reload(pool))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, on_reload)

    internal = server.internal
    starting = web.AppRunner(
        _starting_app(None if internal is None else internal.port),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=0.5,
    )
    await starting.setup()
    # A worker does not listen before it is ready: its ready siblings answer meanwhile.
    for sock in [] if worker else sockets:
        # A copy of the socket: closing this runner's site must leave the listener open for
        # the service, with the connections that arrive meanwhile waiting in its backlog.
        await web.SockSite(starting, sock.dup()).start()

    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=server.keepalive_timeout,
        # After an early answer (408, 413), read what is left of a body for at most as long
        # as a body may take, not aiohttp's default 10 s.
        lingering_time=min(server.read_timeout, 10.0),
        shutdown_timeout=drain_time(stop_budget),
    )
    setup = asyncio.create_task(runner.setup())
    stop_wait = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({setup, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not setup.done():  # stopped before the database answered
            setup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await setup
            await starting.cleanup()
            await runner.cleanup()
            log.info("stopped", seconds=round(time.monotonic() - stop_began, 2))
            return 0
        await starting.cleanup()
        setup.result()  # start-up failed: raise what it raised
        settle_heap()
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        if not worker:
            warn_single_listener(settings, host, port)
        log.info(
            "serving" if not worker else "worker serving",
            **addresses(settings, host, port),
            providers=[p.name for p in app[keys.CONFIG].current.settings.providers],
        )
        if worker:
            _tell_supervisor()
        await stop_wait
        await runner.cleanup()
        log.info("stopped", seconds=round(time.monotonic() - stop_began, 2))
        return 0
    finally:
        stop_wait.cancel()
        if not setup.done():
            setup.cancel()
        with contextlib.suppress(BaseException):
            await starting.cleanup()
        watchdog.disarm()


def _tell_supervisor() -> None:
    fd = os.environ.get(READY_FD)
    if fd and fd.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(fd), f"{os.getpid()}\n".encode())
            os.close(int(fd))
