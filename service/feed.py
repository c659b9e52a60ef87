"""Wakes long-polling feed readers when events commit (LISTEN on the write path's NOTIFY).

One listening connection per process. Readers also re-check on their own every second, so a
lost listener (or an event that only becomes servable when an older transaction ends) delays
an answer by at most that long, never forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .db import connection
from .db.write import FEED_CHANNEL
from .logs import log

RECHECK = 1.0


class FeedSignal:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, seconds: float) -> None:
        """Return when new events may have committed, or after `seconds`."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=min(seconds, RECHECK))

    def _notify(self, *_: Any) -> None:
        # Wake every current waiter; later waiters wait for the next notification.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening, whatever went wrong
                log.warning("feed listener lost its connection", error=str(exc))
            self._notify()  # readers re-check: something may have committed meanwhile
            await asyncio.sleep(RECHECK)

    async def _listen_once(self) -> None:
        conn = await connection.connect(self._dsn)
        closed = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _: closed.set())
            await conn.add_listener(FEED_CHANNEL, self._notify)
            await closed.wait()
        finally:
            if not conn.is_closed():
                await conn.close()
