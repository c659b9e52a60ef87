"""The HTTP servers under test, as subprocesses: the service (`python -m service serve`) with a
temporary configuration, and the bare aiohttp + asyncpg baseline (bare_server.py); the CPU use
of their process trees and the memory (RSS) of their worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MEDIOOT_SECRET = "bench-medioot-secret"
READ_KEY = "bench-read-key-0001"
SPEND_KEY = "bench-spend-key-0001"
SPEND_KEY_NAME = "bench-shop"  # the provider of its events, as an internal service's
CHAIN_KEY = "bench-chain-key-not-a-secret-0123456789"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def serve_has_workers() -> bool:
    """Whether this checkout's `serve` takes --workers."""
    proc = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--workers" in proc.stdout


def config_text(
    dsn: str, pool_size: int | None, server: str = "", max_inflight: int | None = None
) -> str:
    """The service's configuration; `server` holds extra lines of its [server] table,
    `max_inflight` sets writer.max_inflight (else the service's default)."""

    def q(text: str) -> str:
        return json.dumps(text)  # a JSON string is a TOML basic string

    from service.db.connection import with_user
    from service.embedded import RUNTIME_ROLE

    pool = f"pool_max_size = {pool_size}\n" if pool_size else ""
    writer = "" if max_inflight is None else f"[writer]\nmax_inflight = {max_inflight}\n\n"
    # As in production: the service works as the runtime role, migrates as the owner.
    head = f"[server]\n{server}\n" if server else ""
    return head + (
        f"[database]\nurl = {q(with_user(dsn, RUNTIME_ROLE))}\nowner_url = {q(dsn)}\n{pool}\n"
        f"[integrity]\nchain_key = {q(CHAIN_KEY)}\n\n{writer}"
        f'[[providers]]\nname = "medioot"\nprotocol = "medioot"\nsecret = {q(MEDIOOT_SECRET)}\n\n'
        f'[[api_keys]]\nname = "bench"\nkey = {q(READ_KEY)}\nscopes = ["read"]\n\n'
        f"[[api_keys]]\nname = {q(SPEND_KEY_NAME)}\nkey = {q(SPEND_KEY)}\n"
        'scopes = ["spend"]\n'
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LEDGER_CONFIG")}


async def _wait_ready(proc: asyncio.subprocess.Process, port: int, log: Path, path: str) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while True:
            if proc.returncode is not None:
                text = await asyncio.to_thread(log.read_text, errors="replace")
                raise RuntimeError(
                    f"server exited with {proc.returncode} before it was ready; log {log}:\n"
                    + "\n".join(text.splitlines()[-10:])
                )
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"http://{HOST}:{port}{path}") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready on port {port} after 60 s; log {log}")
            await asyncio.sleep(0.1)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            # Its own session: this reaches the server and any workers it started, nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


@dataclass(frozen=True)
class Running:
    port: int
    pid: int


@contextlib.asynccontextmanager
async def _server(args: list[str], log: Path, ready: str) -> AsyncIterator[Running]:
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *(a.replace("{port}", str(port)) for a in args),
            cwd=ROOT,
            env=_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await _wait_ready(proc, port, log, ready)
        yield Running(port, proc.pid)
    finally:
        await _stop(proc)


def served_ms(log: Path, window: tuple[float, float], prefix: str) -> list[float]:
    """The service's own timings (ms) of requests on routes starting with `prefix` that ended in
    `window`, from its access log: from its first middleware to its answer, so without the
    time a request waits for the event loop or on the way."""
    found = []
    with log.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if '"request"' not in line or prefix not in line:
                continue
            try:
                entry = json.loads(line)
                at = dt.datetime.fromisoformat(entry["timestamp"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            route = entry.get("route", "")
            if entry.get("event") == "request" and route.startswith(prefix):
                if window[0] <= at <= window[1] and isinstance(entry.get("ms"), int | float):
                    found.append(float(entry["ms"]))
    return found


@contextlib.asynccontextmanager
async def service(
    dsn: str,
    log: Path,
    workers: int | None,
    pool_size: int | None,
    server: str = "",
    max_inflight: int | None = None,
) -> AsyncIterator[Running]:
    """The service on database `dsn`, listening on a free port until the block ends; `server`
    holds extra lines of its [server] table."""
    config = log.with_suffix(".toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(config_text(dsn, pool_size, server, max_inflight), encoding="utf-8")
    args = [sys.executable, "-m", "service", "serve", "--config", str(config)]
    args += ["--host", HOST, "--port", "{port}"]
    if workers is not None:
        args += ["--workers", str(workers)]
    try:
        async with _server(args, log, "/readyz") as running:
            yield running
    finally:
        config.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def bare(
    dsn: str, log: Path, workers: int | None, pool_size: int | None
) -> AsyncIterator[Running]:
    """The bare baseline reading database `dsn` as the service's runtime role does, as many
    processes as the service's workers, with the service's pool size."""
    from service.db.connection import with_user
    from service.embedded import RUNTIME_ROLE

    args = [sys.executable, str(HERE / "bare_server.py"), "{port}", with_user(dsn, RUNTIME_ROLE)]
    args += ["--workers", str(workers or 1)]
    if pool_size:
        args += ["--pool-size", str(pool_size)]
    async with _server(args, log, "/readyz") as running:
        yield running


# --- CPU use -------------------------------------------------------------------------------------


def _tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of process `pid` and of each of its descendants, by pid."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    found = {}
    for p in processes:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            found[p.pid] = times.user + times.system
    return found


async def cpu_cores(roots: dict[str, int], delay: float, seconds: float) -> dict[str, float]:
    """Cores each process tree used (CPU seconds per second) over `seconds`, after `delay`: the
    service (with any workers), PostgreSQL (the postmaster and its backends), the bare server.
    A process that ends meanwhile drops out; one that starts counts from zero."""
    await asyncio.sleep(delay)
    before = {name: _tree_cpu(pid) for name, pid in roots.items()}
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    after = {name: _tree_cpu(pid) for name, pid in roots.items()}
    elapsed = time.perf_counter() - started
    return {
        name: sum(t - before[name].get(pid, 0.0) for pid, t in after[name].items()) / elapsed
        for name in roots
        if after[name]
    }


# --- memory --------------------------------------------------------------------------------------

MIB = 1024 * 1024


def workers(pid: int) -> list[psutil.Process]:
    """The processes that serve requests: the children of a supervisor (serve --workers, the
    bare server), or the process itself when it has none."""
    try:
        root = psutil.Process(pid)
        children = root.children()
    except psutil.Error:
        return []
    return children or [root]


def rss_mib(pid: int) -> dict[int, float]:
    """The resident memory (MiB) of each worker of the server `pid`, by pid."""
    found = {}
    for p in workers(pid):
        with contextlib.suppress(psutil.Error):
            found[p.pid] = p.memory_info().rss / MIB
    return found


async def max_rss(pid: int, delay: float, seconds: float, every: float = 0.5) -> dict[int, float]:
    """The largest RSS (MiB) of each worker of the server `pid` over `seconds`, after `delay`,
    sampled every `every` seconds."""
    await asyncio.sleep(delay)
    found: dict[int, float] = {}
    end = time.monotonic() + seconds
    while True:
        for p, mib in (await asyncio.to_thread(rss_mib, pid)).items():
            found[p] = max(found.get(p, 0.0), mib)
        if time.monotonic() >= end:
            return found
        await asyncio.sleep(min(every, max(0.0, end - time.monotonic())))
