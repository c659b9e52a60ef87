"""A progress line for long commands (verify, rebuild), drawn only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr) -> None:
        self.label, self.total, self.count = label, max(total, 1), 0
        self._stream = stream
        self._enabled = stream.isatty()
        self._started = self._drawn = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self._enabled and now - self._drawn >= 0.2:
            self._drawn = now
            self._draw(now)

    def done(self) -> None:
        if self._enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def rate(self) -> float:
        return self.count / max(time.monotonic() - self._started, 1e-9)

    def _draw(self, now: float) -> None:
        share = min(self.count / self.total, 1.0)
        bar = "#" * int(share * 30)
        rate = self.count / max(now - self._started, 1e-9)
        self._stream.write(
            f"\r{self.label} [{bar:<30}] {share:4.0%} {self.count:,} events {rate:,.0f}/s"
        )
        self._stream.flush()
