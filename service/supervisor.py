"""`serve --workers N`: one process per core behind one port.

The supervisor owns what must exist once: the embedded PostgreSQL (if no URL is configured), the
schema, and the folder where workers share their Prometheus metrics. Each worker is a full
`serve` process (its own event loop and pool) on the same port with SO_REUSEPORT, so the kernel
spreads connections between them; with `[server.internal]`, each worker binds the internal
listener the same way (workers read it from the configuration; `--host/--port` passed to them
are the walls' listener).

Start-up: the listeners are checked first (a port in use ends the command at once), then the
database is awaited for as long as it takes, then the workers start; `serving` is logged once
every worker has said it serves. A worker that dies is started again, unless it could not bind
its listeners. SIGHUP is forwarded to every worker, each of which reads the configuration file
again. SIGTERM or SIGINT is forwarded too; the workers get `server.shutdown_timeout` less the
time stopping the database needs, whatever is left then is killed, and the database stops; a
second SIGTERM or SIGINT kills the workers and stops the database at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .logs import log
from .serving import (
    EXIT_LISTEN,
    READY_FD,
    ListenError,
    Watchdog,
    addresses,
    bind,
    supervisor_reserve,
    warn_single_listener,
)
from .settings import Settings

RESTART_DELAY = 1.0
EXIT_STOPPED_EARLY = 0


def supervise(settings: Settings, config: str, host: str, port: int, workers: int) -> int:
    from .app import Dsns, database

    try:
        for sock in bind(settings, host, port, reuse_port=True):
            sock.close()
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LISTEN

    total = settings.server.shutdown_timeout
    watchdog = Watchdog()
    children: list[subprocess.Popen[bytes]] = []
    stop_began = 0.0
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping, stop_began
        name = signal.Signals(signum).name
        if stopping:
            for child in children:
                with contextlib.suppress(OSError):
                    child.kill()
            watchdog.force(f"second {name}")
        stopping, stop_began = True, time.monotonic()
        log.info("stopping", signal=name, shutdown_timeout=total)
        watchdog.arm(total)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def reload(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGHUP)

    metrics_dir = Path(tempfile.mkdtemp(prefix="ledger-metrics-"))
    loop = asyncio.new_event_loop()
    resource = database(settings, wait=None)
    # The supervisor migrates; its workers work as the runtime role and do not migrate again.
    opening = loop.create_task(resource.__aenter__())
    loop.add_signal_handler(signal.SIGTERM, opening.cancel)
    loop.add_signal_handler(signal.SIGINT, opening.cancel)
    try:
        dsns: Dsns = loop.run_until_complete(opening)
    except asyncio.CancelledError:
        log.info("stopped before the database answered")
        loop.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        return EXIT_STOPPED_EARLY
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    ready_read, ready_write = os.pipe()
    os.set_blocking(ready_read, False)
    env = {
        **os.environ,
        "DATABASE_URL": dsns.runtime,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        READY_FD: str(ready_write),
    }
    command = [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--worker",
        "--config",
        config,
        "--host",
        host,
        "--port",
        str(port),
    ]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, pass_fds=(ready_write,))

    code = 0
    ready: set[int] = set()
    announced = False
    try:
        children.extend(start() for _ in range(workers))
        log.info("workers started", pids=[c.pid for c in children])
        while not stopping:
            ready |= _read_ready(ready_read)
            if not announced and all(c.pid in ready for c in children):
                announced = True
                warn_single_listener(settings, host, port)
                log.info(
                    "serving",
                    **addresses(settings, host, port),
                    workers=workers,
                    providers=[p.name for p in settings.providers],
                )
            for i, child in enumerate(children):
                if child.poll() is None or stopping:
                    continue
                _forget(metrics_dir, child.pid)
                if child.returncode == EXIT_LISTEN:
                    log.error("a worker could not bind its listeners; stopping", pid=child.pid)
                    code = EXIT_LISTEN
                    stop(signal.SIGTERM, None)
                    break
                log.error("worker exited; starting another", pid=child.pid, code=child.returncode)
                time.sleep(RESTART_DELAY)
                if not stopping:
                    children[i] = start()
            time.sleep(0.1)
    finally:
        if not stopping:  # an exception: stop the workers all the same
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            stop_began = time.monotonic()
        deadline = stop_began + total - supervisor_reserve(total)
        for child in children:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop in time; killed", pid=child.pid)
                child.kill()
                child.wait()
        os.close(ready_read)
        os.close(ready_write)
        loop.run_until_complete(resource.__aexit__(None, None, None))
        loop.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        watchdog.disarm()
        log.info("stopped", seconds=round(time.monotonic() - stop_began, 2))
    return code


def _read_ready(fd: int) -> set[int]:
    """The pids of the workers that said they serve since the last call."""
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return set()
    return {int(word) for word in data.split() if word.isdigit()}


def _forget(metrics_dir: Path, pid: int) -> None:
    # Live gauges of a dead worker must not linger in the totals.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]
