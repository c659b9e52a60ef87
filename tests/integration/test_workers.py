"""`serve --workers 2`: both processes serve one port, metrics add up across them, a killed
worker is replaced, and SIGTERM stops everything."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests import helpers
from tests.helpers import MEDIOOT_SECRET, READ_KEY, medioot, unique

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def supervisor(database_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    config = tmp_path / "ledger.toml"
    config.write_text(
        helpers.database_toml(database_url)
        + f'[[providers]]\nname = "medioot"\nprotocol = "medioot"\nsecret = "{MEDIOOT_SECRET}"\n'
        f'[[api_keys]]\nname = "r"\nkey = "{READ_KEY}"\nscopes = ["read"]\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--workers",
            "2",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()


def workers(process: subprocess.Popen[bytes]) -> list[int]:
    return [c.pid for c in psutil.Process(process.pid).children() if c.is_running()]


async def ready(url: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the service did not become ready")


async def test_two_workers_share_the_port_and_the_metrics(
    supervisor: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, url = supervisor
    await ready(url)
    assert len(workers(process)) == 2
    user = unique()
    async with aiohttp.ClientSession() as session:

        async def send(i: int) -> str:
            params = medioot(user, unique(f"tx{i}"), "1")
            async with session.get(f"{url}/postbacks/medioot", params=params) as resp:
                return await resp.text()

        assert await asyncio.gather(*(send(i) for i in range(40))) == ["OK"] * 40
        headers = {"Authorization": f"Bearer {READ_KEY}"}
        async with session.get(f"{url}/v1/wallets/{user}", headers=headers) as resp:
            assert (await resp.json())["balance"] == "40"
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
    line = 'ledger_postbacks_total{outcome="credited",provider="medioot"} 40.0'
    assert line in text.splitlines()

    victim = workers(process)[0]
    os.kill(victim, signal.SIGKILL)
    end = time.monotonic() + 30
    while time.monotonic() < end and (len(workers(process)) < 2 or victim in workers(process)):  # noqa: ASYNC110  # another process: nothing to await
        await asyncio.sleep(0.2)
    assert len(workers(process)) == 2 and victim not in workers(process)
    await ready(url)

    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 60) == 0
