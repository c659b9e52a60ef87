"""Background upkeep of every service process: the expiry sweep of holds, the retention of
stored idempotency answers and of signed-out operator sessions, and the negative-balance gauges.

Every process runs it; they do not need to agree. Each expiry goes through the write path under
its user's lock, where a hold already ended is left alone, so two processes sweeping the same
hold record one release.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from . import keys, metrics
from .db import Unavailable, read, sessions
from .db.write import Spend, prune_answers
from .domain.spending import Command, Kind
from .logs import log
from .writer import Overloaded

SWEEP_BATCH = 500  # expired holds released per pass
SLOW_EVERY = 15.0  # seconds between the gauges' refresh and a retention pass


async def run(app: web.Application) -> None:
    settings = app[keys.SETTINGS].spend
    slow_due = 0.0
    while True:
        try:
            await sweep(app)
            if time.monotonic() >= slow_due:
                slow_due = time.monotonic() + SLOW_EVERY
                await refresh_gauges(app)
                await prune_answers(app[keys.POOL], settings.idempotency_days)
                await sessions.forget_expired(app[keys.POOL])
        except (Unavailable, Overloaded) as exc:
            log.warning("upkeep skipped a pass", error=str(exc))
        except Exception:
            log.exception("upkeep pass failed")
        await asyncio.sleep(settings.sweep_seconds)


async def sweep(app: web.Application) -> int:
    """Record the release of every hold past its expiry (up to SWEEP_BATCH); how many."""
    rows = await read.expired_holds(app[keys.POOL], SWEEP_BATCH)
    writer = app[keys.WRITER]
    receipts = await asyncio.gather(
        *(
            writer.spend(
                Spend(
                    Command(
                        kind=Kind.EXPIRE,
                        api_key=r["owner"],
                        user_id=r["user_id"],
                        hold_id=r["hold_id"],
                    )
                )
            )
            for r in rows
        )
    )
    released = sum(1 for r in receipts if r.spent is not None)
    if released:
        metrics.SPEND.labels(operation="expire", outcome="applied").inc(released)
    return released


async def refresh_gauges(app: web.Application) -> None:
    count, total = await read.negative_wallets(app[keys.POOL])
    metrics.NEGATIVE_WALLETS.set(count)
    # Prometheus samples are floating point: the gauge is for alerting on exposure; the exact
    # sum is in the wallets table (`SELECT sum(balance) FROM wallets WHERE balance < 0`).
    metrics.NEGATIVE_BALANCE.set(float(-total))
