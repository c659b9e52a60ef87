"""Wakes long-polling feed readers when something new is servable to them.

One process-wide watcher, whatever the number of readers: it LISTENs on the write path's NOTIFY
(one connection per process), and on a notification, or every RECHECK seconds while readers
wait, asks the database once for the feed's head, the last event the feed may serve (a
commit only becomes servable once every older transaction has ended, which sends no
notification: the periodic check catches that). It wakes only the readers whose cursor is
behind that head, so each woken reader's query finds events; a burst of notifications costs one
query, not one per reader. Every TICK seconds it also lets go of readers whose client has
disconnected, so an abandoned long-poll ends within a fraction of a second rather than after its
whole `wait`.

Without a connection to LISTEN on (the database is behind PgBouncer in transaction pooling, which
cannot carry a LISTEN, and no direct `database.listen_url` is configured), it polls instead: the
head query every POLL seconds while readers wait, so a long-poll wakes within that. The feed's
gap-safety never depends on the notifications: they only say when to look.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from .db import Unavailable, connection, read
from .db.write import FEED_CHANNEL
from .logs import log

RECHECK = 1.0  # seconds between head queries while readers wait and nothing is notified
TICK = 0.25  # seconds between checks for readers whose client has gone
POLL = 0.15  # seconds between head queries while readers wait, with nothing to LISTEN on

Cursor = tuple[int, int]  # (txid, position), as the feed orders events


class _Waiter:
    __slots__ = ("after", "future", "gone")

    def __init__(self, after: Cursor, gone: Callable[[], bool]) -> None:
        self.after = after
        self.gone = gone
        self.future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def wake(self, servable: bool) -> None:
        if not self.future.done():
            self.future.set_result(servable)


class FeedSignal:
    def __init__(self, dsn: str | None, pool: asyncpg.Pool) -> None:
        """`dsn`: where to LISTEN (a direct connection, not through PgBouncer); None to poll."""
        self._dsn = dsn
        self._pool = pool
        self._recheck = RECHECK if dsn is not None else POLL
        self._notified = asyncio.Event()
        self._waiters: set[_Waiter] = set()
        self._head: Cursor | None = None  # the last head seen; the real one is never behind it
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch())]
        if self._dsn is not None:
            self._tasks.append(asyncio.create_task(self._listen()))

    def close(self) -> None:
        """Let every reader go now, and every later one at once: the process is stopping."""
        self._closing = True
        for waiter in list(self._waiters):
            waiter.wake(False)

    async def stop(self) -> None:
        self.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiter in self._waiters:
            waiter.wake(False)

    @property
    def waiting(self) -> int:
        """How many readers are waiting now."""
        return len(self._waiters)

    async def wait(self, after: Cursor, seconds: float, gone: Callable[[], bool]) -> bool:
        """True as soon as an event after `after` may be servable; False after `seconds`, once
        `gone()` says the reader's client has disconnected, or once the process is stopping."""
        if self._head is not None and self._head > after:
            return True
        if self._closing:
            return False
        waiter = _Waiter(after, gone)
        self._waiters.add(waiter)
        try:
            async with asyncio.timeout(seconds):
                return await waiter.future
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)

    def _notify(self, *_: Any) -> None:
        self._notified.set()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        next_check = 0.0
        tick = min(TICK, self._recheck)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._notified.wait()
            if not self._waiters:
                # A notification nobody waits for needs no query. A reader arriving just after
                # it is covered all the same: the next check is due, and comes within a TICK.
                self._notified.clear()
                continue
            for waiter in [w for w in self._waiters if w.gone()]:
                waiter.wake(False)
            if not self._notified.is_set() and loop.time() < next_check:
                continue
            self._notified.clear()  # notifications from here on need another query
            next_check = loop.time() + self._recheck
            try:
                head = await read.feed_head(self._pool)
            except Exception as exc:  # the watcher must outlive any failure
                if not isinstance(exc, Unavailable):
                    log.warning("feed head query failed", error=str(exc))
                # Let every reader ask for itself: it answers 503, as a reader's own query would.
                for waiter in list(self._waiters):
                    waiter.wake(True)
                continue
            if head is None:
                continue
            self._head = head
            for waiter in list(self._waiters):
                if head > waiter.after:
                    waiter.wake(True)

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
        assert self._dsn is not None
        conn = await connection.connect(self._dsn)
        closed = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _: closed.set())
            await conn.add_listener(FEED_CHANNEL, self._notify)
            await closed.wait()
        finally:
            if not conn.is_closed():
                await conn.close()
