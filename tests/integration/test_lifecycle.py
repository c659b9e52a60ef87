"""`serve` as a deploy tool sees it, real processes: start-up in order (a busy port fails at
once, an unreachable database is waited for and said so, `serving` only once it answers),
SIGTERM answers long-polls and in-flight postbacks and stops the embedded PostgreSQL within
server.shutdown_timeout, SIGHUP reloads providers and API keys without failing a request."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from ops.chaos.dbproxy import DatabaseProxy
from service.embedded import EmbeddedPostgres
from tests.helpers import (
    CHAIN_KEY,
    MEDIOOT_SECRET,
    READ_KEY,
    database_toml,
    medioot,
    run_cli,
    unique,
)
from tests.integration.test_workers import free_port
from tests.processes import Service

ROOT = Path(__file__).resolve().parents[2]
NEW_SECRET = "test-medioot-secret-rotated"
OTHER_SECRET = "test-other-wall-secret-0001"
STABLE_SECRET = "test-stable-wall-secret-0001"
OLD_KEY = "test-old-api-key-0001"
NEW_KEY = "test-new-api-key-0001"


async def until(condition: Any, limit: float = 60, what: str = "") -> None:
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {limit} s: {what}")
        await asyncio.sleep(0.1)


async def status(url: str, **kwargs: Any) -> int | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url, **kwargs) as resp,
        ):
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return None


def postgres_of(data_dir: Path) -> list[psutil.Process]:
    """The PostgreSQL server processes running on `data_dir`."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if any("postgres" in part for part in cmdline[:1]) and str(data_dir) in cmdline:
            found.append(p)
    return found


# --- start-up ----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_port_in_use_fails_at_once_with_one_line(
    database_url: str, tmp_path: Path, services: list[Service], workers: str
) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(database_toml(database_url))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        service = Service(config, port, tmp_path / "err.log", "--workers", workers)
        services.append(service)
        code = await asyncio.to_thread(service.process.wait, 10)
        took = time.monotonic() - started
    assert code == 3
    assert took < 5, took
    lines = service.log.read_text().splitlines()
    assert lines == [f"error: cannot serve on 127.0.0.1:{port}: Address already in use"], lines
    assert service.out.read_text() == ""


async def test_start_up_waits_for_the_database_and_says_so(
    database_url: str, tmp_path: Path, services: list[Service]
) -> None:
    proxy = DatabaseProxy(database_url)
    dsn = await proxy.start()
    try:
        proxy.cut()
        port, internal = free_port(), free_port()
        config = tmp_path / "ledger.toml"
        config.write_text(
            f"[server.internal]\nport = {internal}\n"
            + database_toml(dsn)
            + f'[[api_keys]]\nname = "r"\nkey = "{READ_KEY}"\nscopes = ["read"]\n'
        )
        service = Service(config, port, tmp_path / "err.log")
        services.append(service)
        readyz = f"http://127.0.0.1:{internal}/readyz"
        await until(lambda: service.events("waiting for the database"), what="waiting logged")
        assert await status(readyz) == 503
        assert await status(f"http://127.0.0.1:{internal}/healthz") == 200
        assert await status(f"http://127.0.0.1:{internal}/v1/wallets/x") == 503
        assert await status(f"http://127.0.0.1:{port}/postbacks/medioot") == 503
        await asyncio.sleep(3)
        assert not service.events("serving")
        assert service.process.poll() is None
        waiting = service.events("waiting for the database")
        assert len(waiting) == 1, "repeated at an interval, not at every attempt"
        assert waiting[0]["error"] and waiting[0]["level"] == "warning"

        proxy.restore()
        await until(lambda: service.events("serving"), what="serving after the database")
        assert await status(readyz) == 200
        (serving,) = service.events("serving")
        assert serving["walls"] == f"127.0.0.1:{port}"
        assert serving["internal"] == f"127.0.0.1:{internal}"
    finally:
        await proxy.close()


# --- stopping ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_dir() -> Iterator[Path]:
    data_dir = ROOT / ".data" / "lifecycle-test" / f"pg-{uuid.uuid4().hex[:8]}"
    try:
        yield data_dir
    finally:
        EmbeddedPostgres(data_dir).stop()
        shutil.rmtree(data_dir.parent / data_dir.name, ignore_errors=True)


async def events_of(data_dir: Path, user: str) -> int:
    """How many events `user` has, read from the embedded server on `data_dir`."""
    import asyncpg

    server = EmbeddedPostgres(data_dir)
    await asyncio.to_thread(server.start)
    try:
        conn = await asyncpg.connect(server.dsn())
        try:
            n: int = await conn.fetchval("SELECT count(*) FROM events WHERE user_id = $1", user)
            return n
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(server.stop)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_answers_long_polls_and_postbacks_and_stops_the_database(
    embedded_dir: Path, tmp_path: Path, services: list[Service], workers: str
) -> None:
    port, internal = free_port(), free_port()
    config = tmp_path / "ledger.toml"
    config.write_text(
        f"[server.internal]\nport = {internal}\n"
        f"[database]\ndata_dir = {json.dumps(str(embedded_dir))}\n"
        f"[integrity]\nchain_key = {json.dumps(CHAIN_KEY)}\n"
        f'[[providers]]\nname = "medioot"\nprotocol = "medioot"\nsecret = "{MEDIOOT_SECRET}"\n'
        f'[[api_keys]]\nname = "r"\nkey = "{READ_KEY}"\nscopes = ["read"]\n'
    )
    service = Service(config, port, tmp_path / "err.log", "--workers", workers)
    services.append(service)
    api = f"http://127.0.0.1:{internal}"
    walls = f"http://127.0.0.1:{port}"
    await until(lambda: service.events("serving"), 120, "serving")
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    user = unique()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{api}/v1/events?limit=1000", headers=headers) as resp:
            page = await resp.json()
        while len(page["events"]) == 1000:  # to the head of the feed (earlier runs' events)
            url = f"{api}/v1/events?limit=1000&after={page['next']}"
            async with session.get(url, headers=headers) as resp:
                page = await resp.json()
        cursor = page["next"]

        async def long_poll() -> tuple[int, dict[str, Any], float]:
            url = f"{api}/v1/events?wait=30&after={cursor}"
            async with session.get(url, headers=headers) as resp:
                return resp.status, await resp.json(), time.monotonic()

        async def postback(i: int) -> tuple[int, str] | None:
            params = medioot(user, f"{user}-{i}", "1")
            try:
                async with session.get(f"{walls}/postbacks/medioot", params=params) as resp:
                    return resp.status, await resp.text()
            except aiohttp.ClientConnectionError:
                return None  # not connected before the listener closed: never accepted

        polls = [asyncio.create_task(long_poll()) for _ in range(3)]
        await asyncio.sleep(1)  # every long-poll is waiting
        sending = [asyncio.create_task(postback(i)) for i in range(40)]
        await asyncio.sleep(0.05)
        signalled = time.monotonic()
        service.signal(signal.SIGTERM)
        answered = await asyncio.gather(*polls)
        results = await asyncio.gather(*sending)
    code = await asyncio.to_thread(service.process.wait, 30)
    took = time.monotonic() - signalled
    print(f"workers {workers}: exited {took:.2f} s after SIGTERM")
    for poll_status, body, at in answered:
        assert poll_status == 200
        assert body == {"events": [], "next": cursor}
        assert at - signalled < 1.5, at - signalled
    recorded = [r for r in results if r is not None]
    assert recorded, "no postback was in flight"
    assert all(r == (200, "OK") for r in recorded), recorded
    assert code == 0
    assert took < 10, took  # server.shutdown_timeout
    assert not postgres_of(embedded_dir), "the embedded PostgreSQL outlived the service"
    assert service.events("stopped")
    # Every postback answered OK was committed.
    assert await events_of(embedded_dir, user) == len(recorded)


# --- reload ------------------------------------------------------------------------------------


def reload_config(database_url: str, *, rotated: bool, pool_max: int = 10) -> str:
    secret = NEW_SECRET if rotated else MEDIOOT_SECRET
    text = (
        f"[database]\npool_max_size = {pool_max}\n"
        + database_toml(database_url).replace("[database]\n", "")
        + f'[[providers]]\nname = "medioot"\nprotocol = "medioot"\nsecret = "{secret}"\n'
        f'[[providers]]\nname = "stable"\nprotocol = "medioot"\nsecret = "{STABLE_SECRET}"\n'
        f'[[api_keys]]\nname = "r"\nkey = "{READ_KEY}"\nscopes = ["read"]\n'
    )
    if rotated:
        text += (
            f'[[providers]]\nname = "other"\nprotocol = "medioot"\nsecret = "{OTHER_SECRET}"\n'
            f'[[api_keys]]\nname = "new"\nkey = "{NEW_KEY}"\nscopes = ["read"]\n'
        )
    else:
        text += f'[[api_keys]]\nname = "old"\nkey = "{OLD_KEY}"\nscopes = ["read"]\n'
    return text


@pytest.fixture
async def fresh_session() -> AsyncIterator[aiohttp.ClientSession]:
    # A connection per request: under --workers, each may reach another worker.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_reloads_providers_and_keys_without_failing_a_request(
    database_url: str,
    tmp_path: Path,
    services: list[Service],
    workers: str,
    fresh_session: aiohttp.ClientSession,
) -> None:
    port = free_port()
    config = tmp_path / "ledger.toml"
    config.write_text(reload_config(database_url, rotated=False))
    service = Service(config, port, tmp_path / "err.log", "--workers", workers)
    services.append(service)
    url = f"http://127.0.0.1:{port}"
    await until(lambda: service.events("serving"), 60, "serving")
    session = fresh_session
    user = unique()

    async def get(path: str, **kwargs: Any) -> tuple[int, str]:
        async with session.get(url + path, **kwargs) as resp:
            return resp.status, await resp.text()

    def key(k: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {k}"}

    async def checks(rotated: bool) -> None:
        for _ in range(int(workers) * 4):  # every worker, very likely
            old = medioot(user, unique("t"), "1")
            new = medioot(user, unique("t"), "1", secret=NEW_SECRET)
            other = medioot(user, unique("t"), "1", secret=OTHER_SECRET)
            assert (await get("/postbacks/medioot", params=old))[0] == (403 if rotated else 200)
            assert (await get("/postbacks/medioot", params=new))[0] == (200 if rotated else 403)
            assert (await get("/postbacks/other", params=other))[0] == (200 if rotated else 404)
            assert (await get(f"/v1/wallets/{user}", headers=key(NEW_KEY)))[0] in (
                (200,) if rotated else (401,)
            )
            assert (await get(f"/v1/wallets/{user}", headers=key(OLD_KEY)))[0] in (
                (401,) if rotated else (200,)
            )

    await checks(rotated=False)

    # A load that is valid under both configurations runs through every reload.
    failures: list[str] = []
    done = 0
    running = True

    async def load(n: int) -> None:
        nonlocal done
        while running:
            params = medioot(user, unique(f"l{n}"), "1", secret=STABLE_SECRET)
            try:
                code, text = await get("/postbacks/stable", params=params)
                if (code, text) != (200, "OK"):
                    failures.append(f"postback {code} {text}")
                code, text = await get(f"/v1/wallets/{user}", headers=key(READ_KEY))
                if code != 200:
                    failures.append(f"wallet {code} {text}")
            except aiohttp.ClientError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            done += 1

    loaders = [asyncio.create_task(load(n)) for n in range(8)]
    try:
        await asyncio.sleep(0.5)
        config.write_text(reload_config(database_url, rotated=True, pool_max=12))
        service.signal(signal.SIGHUP)
        expected = int(workers)
        await until(lambda: len(service.events("configuration reloaded")) == expected, 30)
        await checks(rotated=True)

        # A file that does not load: one line (per process), and everything works as before.
        config.write_text("[[providers]\nname = ")
        service.signal(signal.SIGHUP)
        await until(lambda: len(service.events("configuration not reloaded")) == expected, 30)
        await asyncio.sleep(0.5)
        await checks(rotated=True)
        config.write_text(
            reload_config(database_url, rotated=True) + "[server]\nshutdown_timeout = 0\n"
        )
        service.signal(signal.SIGHUP)
        await until(lambda: len(service.events("configuration not reloaded")) == 2 * expected)
        await checks(rotated=True)
    finally:
        running = False
        await asyncio.gather(*loaders)
    assert done > 50
    assert failures == []

    reloaded = service.events("configuration reloaded")
    assert reloaded[0]["providers"] == ["medioot", "stable", "other"]
    assert reloaded[0]["api_keys"] == ["r", "new"]
    restart = service.events("needs a restart")
    assert len(restart) == expected and restart[0]["settings"] == ["database.pool_max_size"]
    refused = service.events("configuration not reloaded")
    assert "not valid TOML" in refused[0]["error"]
    assert "server.shutdown_timeout" in refused[-1]["error"]
    errors = [line for line in service.lines() if line.get("level") in ("error", "text")]
    assert len(errors) == 2 * expected, errors
    for secret in (NEW_SECRET, OTHER_SECRET, NEW_KEY, OLD_KEY):
        assert secret not in service.log.read_text()


# --- the command line ----------------------------------------------------------------------------


def test_make_run_passes_port_and_host() -> None:
    # Under `make test` this make is a sub-make, which prints "Entering directory" lines: run
    # it as a make of its own, and read the line that starts the service.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def command(*args: str) -> str:
        done = subprocess.run(
            ["make", "--no-print-directory", "-n", "run", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        (line,) = [x for x in done.stdout.splitlines() if "-m service serve" in x]
        return line.strip()

    assert command().endswith("-m service serve --config ops/dev.toml")
    assert command("PORT=1234").endswith("serve --config ops/dev.toml --port 1234")
    assert command("PORT=1234", "HOST=0.0.0.0").endswith(
        "serve --config ops/dev.toml --host 0.0.0.0 --port 1234"
    )


async def test_help_names_every_command_in_plain_words() -> None:
    code, out, err = await run_cli("--help")
    assert code == 0 and err == ""
    for name in ("serve", "migrate", "verify", "rebuild", "checkpoint", "setup", "simulate"):
        assert f"    {name}" in out, name
        sub_code, sub_out, _ = await run_cli(name, "--help")
        assert sub_code == 0 and "--config" in sub_out, name
        assert "CONTRACT" not in sub_out.upper() and "#" not in sub_out, name
    assert "stdout" in out and "stderr" in out
    assert "SIGHUP" in (await run_cli("serve", "--help"))[1]


@pytest.mark.parametrize("command", ["migrate", "verify"])
async def test_stdout_holds_only_the_result(
    database_url: str, tmp_path: Path, command: str
) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text(database_toml(database_url))
    code, out, err = await run_cli(command, "--config", str(config))
    assert code == 0, err
    assert out.splitlines() == [
        "migrate: schema.sql applied" if command == "migrate" else out.splitlines()[0]
    ]
    assert out.startswith(f"{command}: ")
    for line in err.splitlines():
        json.loads(line)  # the log, on stderr
