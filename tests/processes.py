"""`python -m service serve` as a real process, for the tests that need one (listeners,
start-up and stopping, reload): its log (stderr) in a file, stopped with SIGTERM at the end of
the test by the `services` fixture (registered in conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


class Service:
    """`serve --config config --port port *extra`; its stderr in `log`, its stdout beside it."""

    def __init__(self, config: Path, port: int, log: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self.log = log
        self.out = log.with_suffix(".out")
        with log.open("wb") as err, self.out.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "service", "serve", "--config", str(config)),
                    *("--port", str(port), *extra),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
            )

    def lines(self) -> list[dict[str, Any]]:
        """Every line of its log, a line that is not JSON as {"event": line, "level": "text"}."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"event": line, "level": "text"})
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            children = psutil.Process(self.process.pid).children(recursive=True)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
            for child in children:
                if child.is_running():
                    child.kill()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Services a test starts (append them); each is stopped when the test ends."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in started:
            service.stop()
