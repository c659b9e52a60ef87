"""Background upkeep of every service process: the expiry sweep of holds, the retention of
stored idempotency answers and of signed-out operator sessions, the postback log's partitions
(made ahead, dropped past retention), and the gauges.

Every process runs it; they do not need to agree. Each expiry goes through the write path under
its user's lock, where a hold already ended is left alone, so two processes sweeping the same
hold record one release.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
from aiohttp import web

from . import keys, metrics
from .db import Unavailable, partitions, read, sessions
from .db.write import Spend, prune_answers
from .domain.spending import Command, Kind
from .logs import log
from .writer import Overloaded

SWEEP_BATCH = 500  # expired holds released per pass
SLOW_EVERY = 15.0  # seconds between the gauges' refresh and a retention pass
# Seconds between two passes over the postback log's partitions (the first at start-up), and
# before another try when one could not finish.
PARTITIONS_EVERY = 3600.0
PARTITIONS_RETRY = 60.0


async def run(app: web.Application) -> None:
    settings = app[keys.SETTINGS].spend
    slow_due = partitions_due = 0.0
    while True:
        if time.monotonic() >= partitions_due:
            done = await tend_postback_log(
                app[keys.POOL], app[keys.SETTINGS].postback_log.retention_days
            )
            partitions_due = time.monotonic() + (PARTITIONS_EVERY if done else PARTITIONS_RETRY)
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
        metrics.spend("expire", "applied", released)
    return released


async def refresh_gauges(app: web.Application) -> None:
    count, total = await read.negative_wallets(app[keys.POOL])
    metrics.NEGATIVE_WALLETS.set(count)
    # Prometheus samples are floating point: the gauge is for alerting on exposure; the exact
    # sum is in the wallets table (`SELECT sum(balance) FROM wallets WHERE balance < 0`).
    metrics.NEGATIVE_BALANCE.set(float(-total))


async def tend_postback_log(pool: asyncpg.Pool, retention_days: int) -> bool:
    """Make the postback log's partitions for today and the next days, drop those past
    retention, and refresh the oldest-postback gauge; False when it could not finish. Every
    process does it: the database runs one pass at a time, and the others find nothing to do."""
    try:
        for partition, moved in await partitions.prepare(pool):
            log.info("postback log partition created", partition=partition, rows_moved=moved)
        for partition, rows in await partitions.expire(pool, retention_days):
            log.info(
                "postback log partition dropped",
                partition=partition,
                approx_rows=rows,
                retention_days=retention_days,
            )
        oldest = await partitions.oldest(pool)
    except (Unavailable, asyncpg.LockNotAvailableError) as exc:
        # LockNotAvailable: a drop waited its lock_timeout for the log's readers and writers.
        log.warning("postback log partitions skipped a pass", error=str(exc))
        return False
    except Exception:
        log.exception("postback log partitions pass failed")
        return False
    metrics.POSTBACK_LOG_OLDEST.set(0 if oldest is None else oldest.timestamp())
    return True
