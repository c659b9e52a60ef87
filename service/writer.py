"""Group commit: concurrent postbacks (and spending requests) share one transaction of the write
path.

The cost of a postback is dominated by its commit (a WAL flush). Gathering concurrent postbacks
into one `append` call pays that cost once per batch. The policy:

- When no batch is being written, a postback is written at once: batching adds no latency to
  an idle service.
- While batches are in flight, new postbacks gather for up to `window` seconds (or until `cap`
  are waiting), then go as the next batch; at most `inflight` batches are written at once.
- Each caller is answered only after its batch commits. A batch that fails for a database
  reason fails all its members (503, the walls retry); one that fails for any other reason is
  retried one postback at a time, so a single bad postback cannot take its neighbours down.
- Past `max_queue` waiting postbacks, `submit` refuses at once (`Overloaded`, 503 with
  Retry-After) instead of letting queues and latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import asyncpg

from .db import Unavailable
from .db.write import Item, Receipt, Result, Spend, SpendReceipt, Submission, append, notify_feed
from .domain.events import NEW_EVENT
from .logs import log

_Pending = tuple[Item, "asyncio.Future[Any]"]
NOTIFY_GAP = 0.01  # seconds between two notifications of the feed's readers, at the least


class Overloaded(Exception):
    """More postbacks are waiting for the database than the service will queue."""


class Writer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        window: float = 0.002,
        cap: int = 100,
        inflight: int = 4,
        max_queue: int = 2000,
    ) -> None:
        self._pool = pool
        self._window, self._cap, self._max_queue = window, cap, max_queue
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._slots = asyncio.Semaphore(inflight)
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._closing = False
        self._unnotified = False  # a batch committed since the last notification was sent

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    async def submit(self, submission: Submission) -> Receipt:
        """Record one postback; raises `Unavailable` when it could not be committed and
        `Overloaded` when too many are already waiting."""
        receipt: Receipt = await self._enqueue(submission)
        return receipt

    async def spend(self, spend: Spend) -> SpendReceipt:
        """Decide and record one spending request, in the same batches as postbacks; raises
        like `submit`."""
        receipt: SpendReceipt = await self._enqueue(spend)
        return receipt

    async def _enqueue(self, item: Item) -> Any:
        if self._closing:
            raise Unavailable("the service is shutting down")
        if len(self._queue) >= self._max_queue:
            raise Overloaded(f"{len(self._queue)} postbacks already wait for the database")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._arrived.set()
        if len(self._queue) >= self._cap:
            self._full.set()
        return await future

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def close(self) -> None:
        """Write what is queued, wait for every batch in flight, then stop."""
        self._closing = True
        self._arrived.set()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._notifier is not None:
            await asyncio.gather(self._notifier, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                continue
            if self._inflight and len(self._queue) < self._cap and not self._closing:
                # Busy: give the next batch a moment to fill, as its commit would wait anyway.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._window)
            await self._slots.acquire()
            batch = [self._queue.popleft() for _ in range(min(self._cap, len(self._queue)))]
            if len(self._queue) < self._cap:
                self._full.clear()
            self._inflight += 1
            task = asyncio.create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            await self._write(batch)
        finally:
            self._inflight -= 1
            self._slots.release()

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            receipts = await append(self._pool, [item for item, _ in batch])
        except Unavailable as exc:
            for _, future in batch:
                _settle(future, exc)
        except Exception as exc:
            if len(batch) == 1:
                log.exception("postback could not be written")
                _settle(batch[0][1], exc)
                return
            log.exception("batch could not be written; retrying its postbacks one by one")
            for pending in batch:
                await self._write([pending])
        else:
            for (_, future), receipt in zip(batch, receipts, strict=True):
                if not future.done():  # the caller may have gone away; the write stands
                    future.set_result(receipt)
            if any(_appended(r) for r in receipts):
                self._notify_soon()

    def _notify_soon(self) -> None:
        # One notification at a time is enough: it only tells readers to look again.
        self._unnotified = True
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._notify())

    async def _notify(self) -> None:
        """Notify until no commit is left unannounced, at most once per NOTIFY_GAP: under load
        one notification covers the batches of the last few milliseconds, rather than each
        batch paying a round trip of its own. A commit is announced within NOTIFY_GAP and a
        round trip of itself."""
        while self._unnotified:
            self._unnotified = False
            try:
                await notify_feed(self._pool)
            except Unavailable:
                pass  # readers re-check every second anyway
            await asyncio.sleep(NOTIFY_GAP)


def _appended(result: Result) -> bool:
    if isinstance(result, Receipt):
        return result.outcome in NEW_EVENT
    return result.spent is not None


def _settle(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
