"""`serve --workers N`: one process per core behind one port.

The supervisor owns what must exist once: the embedded PostgreSQL (if no URL is configured), the
schema, and the folder where workers share their Prometheus metrics. Each worker is a full
`serve` process (its own event loop and pool) on the same port with SO_REUSEPORT, so the kernel
spreads connections between them; with `[server.internal]`, each worker binds the internal
listener the same way (workers read it from the configuration; `--host/--port` passed to them
are the walls' listener). A worker that dies is started again; SIGTERM or SIGINT stops
them all, waits for them to answer what they hold, then stops the database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .logs import log
from .settings import Settings

RESTART_DELAY = 1.0
STOP_TIMEOUT = 30.0


def supervise(settings: Settings, config: str, host: str, port: int, workers: int) -> int:
    from .app import database

    metrics_dir = Path(tempfile.mkdtemp(prefix="ledger-metrics-"))
    loop = asyncio.new_event_loop()
    resource = database(settings)
    # The supervisor migrates; its workers work as the runtime role and do not migrate again.
    dsns = loop.run_until_complete(resource.__aenter__())
    env = {**os.environ, "DATABASE_URL": dsns.runtime, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
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
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = [subprocess.Popen(command, env=env) for _ in range(workers)]
    internal = settings.server.internal
    log.info(
        "workers started",
        pids=[c.pid for c in children],
        port=port,
        internal_port=None if internal is None else internal.port,
    )
    try:
        while not stopping:
            for i, child in enumerate(children):
                if child.poll() is not None:
                    _forget(metrics_dir, child.pid)
                    log.error(
                        "worker exited; starting another", pid=child.pid, code=child.returncode
                    )
                    time.sleep(RESTART_DELAY)
                    children[i] = subprocess.Popen(command, env=env)
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in children:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
        loop.run_until_complete(resource.__aexit__(None, None, None))
        loop.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        log.info("workers stopped")
    return 0


def _forget(metrics_dir: Path, pid: int) -> None:
    # Live gauges of a dead worker must not linger in the totals.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]
