"""How fast the postback log answers its lookups when it is large.

This migrates a fresh database, fills postback_log with `--rows` synthetic rows (INSERT ...
SELECT generate_series, a million rows per statement, the log's secondary indexes dropped during
the load and built again afterwards from schema.sql), ANALYZEs it, then times each lookup the API
makes through `service.db.read` (`postbacks`, `postback_summary`), `--runs` times each with
other random values, and prints the median and p95 time and the rows returned, then the size of
the table and of each of its indexes.

The rows: about 20 providers (a few busy, many quiet), `--users` distinct users, received_at
spread evenly over the last 90 days with several rows sharing a time (as a group commit writes
them), about 5 % refused (rejected with a reason: signature, source_ip, replay, token; or
invalid), the rest credited, duplicates, reversals and status changes.

    python ops/bench/postback_log.py                    # 10,000,000 rows, 20 runs a lookup
    python ops/bench/postback_log.py --rows 1000000 --runs 50
    python ops/bench/postback_log.py --database-url postgresql://...   # an existing server
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pgtools
import procs
from scenarios import say

from service.db import read
from service.db.connection import connect, create_pool, migrate
from service.embedded import RUNTIME_ROLE

ROOT = procs.ROOT
DAYS = 90
PROVIDERS = 20
CHUNK = 1_000_000
PAGE = 100  # the API's default page

# One row per number i of the series, its time proportional to i (ids and times grow
# together, as they do in the service), ten rows to one time. r picks the outcome, s the
# provider (squared: wall00 is the busiest), u the user.
_FILL = """
INSERT INTO postback_log (received_at, request_id, provider, outcome, http_status, detail,
                          client_ip, method, params, event_position, user_id, transaction, reason)
SELECT at, 'req-' || i, provider, outcome,
       CASE outcome WHEN 'rejected' THEN 403 WHEN 'invalid' THEN 400 ELSE 200 END,
       CASE outcome WHEN 'rejected' THEN 'authentication failed'
                    WHEN 'invalid' THEN 'parameter reward is not a number' ELSE '' END,
       '203.0.113.' || (i % 250), 'GET',
       jsonb_build_object('subid', user_id, 'transid', transaction, 'reward', '1.25',
                          'status', CASE outcome WHEN 'reversed' THEN '2' ELSE '1' END),
       CASE WHEN outcome IN ('rejected', 'invalid', 'duplicate') THEN NULL ELSE i END,
       user_id, transaction,
       CASE WHEN outcome <> 'rejected' THEN NULL
            WHEN r2 < 0.6 THEN 'signature' WHEN r2 < 0.8 THEN 'source_ip'
            WHEN r2 < 0.95 THEN 'replay' ELSE 'token' END
FROM (
    SELECT i, r2,
           $3::timestamptz + (i / 10) * $4::interval AS at,
           'wall' || lpad(floor($5::int * s * s)::int::text, 2, '0') AS provider,
           CASE WHEN r < 0.04 THEN 'rejected' WHEN r < 0.05 THEN 'invalid'
                WHEN r < 0.85 THEN 'credited' WHEN r < 0.93 THEN 'duplicate'
                WHEN r < 0.97 THEN 'reversed' ELSE 'status_changed' END AS outcome,
           'user-' || floor(u * $6::int)::int AS user_id,
           -- a duplicate or a reversal names the transaction of a credit shortly before it
           'tx-' || CASE WHEN r >= 0.85 THEN greatest(i - 1 - floor(r2 * 1000)::bigint, 1)
                         ELSE i END AS transaction
    FROM (SELECT i, random() AS r, random() AS r2, random() AS s, random() AS u
          FROM generate_series($1::bigint, $2::bigint) AS i) AS g
) AS t
"""

_INDEXES = """
SELECT c.relname AS name FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = 'postback_log'::regclass AND NOT i.indisprimary
"""

# Each index of the log, summed over the log's partitions (one per day).
_SIZES = """
SELECT c.relname AS name,
       (SELECT sum(pg_relation_size(t.relid)) FROM pg_partition_tree(c.oid) AS t)::bigint AS bytes
FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = 'postback_log'::regclass ORDER BY c.relname
"""
_TOTAL = """
SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('postback_log')
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    pgtools.add_database_argument(p)
    p.add_argument("--rows", type=int, default=10_000_000, help="rows (default 10,000,000)")
    p.add_argument("--users", type=int, help="distinct users (default rows/10, at most 1M)")
    p.add_argument("--runs", type=int, default=20, help="timed runs of each lookup (default 20)")
    args = p.parse_args(argv)
    if args.users is None:
        args.users = max(1, min(1_000_000, args.rows // 10))
    if min(args.rows, args.users, args.runs) < 1:
        p.error("--rows, --users and --runs must be >= 1")
    return args


async def fill(dsn: str, rows: int, users: int, end: dt.datetime) -> float:
    """`rows` rows ending at `end`; the seconds it took, indexes and ANALYZE included."""
    started = time.monotonic()
    conn = await connect(dsn, wait=10)
    try:
        await conn.execute("SET synchronous_commit = off")  # the CHECKPOINT below makes it last
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for index in await conn.fetch(_INDEXES):
            await conn.execute(f'DROP INDEX "{index["name"]}"')
        start = end - dt.timedelta(days=DAYS)
        # A partition for each day, as the service's upkeep would have made them day by day.
        await conn.fetch(
            "SELECT * FROM postback_log_prepare($1::date, $2::date)", start.date(), end.date()
        )
        step = dt.timedelta(days=DAYS) / max(1, rows // 10)
        done = 0
        while done < rows:
            n = min(CHUNK, rows - done)
            await conn.execute(_FILL, done + 1, done + n, start, step, PROVIDERS, users)
            done += n
            rate = done / (time.monotonic() - started)
            say(f"  {done:,} of {rows:,} rows ({rate:,.0f}/s)")
    finally:
        await conn.close()
    say("  building the indexes (schema.sql)")
    await migrate(dsn, runtime_role=RUNTIME_ROLE, create_role=True)
    conn = await connect(dsn, wait=10)
    try:
        await conn.execute("VACUUM ANALYZE postback_log")
    finally:
        await conn.close()
    await pgtools.checkpoint(dsn)
    return time.monotonic() - started


Query = Callable[[], Awaitable[int]]


@dataclass
class Timing:
    name: str
    ms: list[float]
    rows: list[int]

    def line(self) -> str:
        ordered = sorted(self.ms)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return (
            f"{self.name:<38}{statistics.median(self.ms):>10.2f}{p95:>10.2f}"
            f"{statistics.median(self.rows):>10g}  ({min(self.rows)}-{max(self.rows)})"
        )


async def timed(
    name: str, runs: int, prepare: Callable[[random.Random], Awaitable[Query]], rng: random.Random
) -> Timing:
    """`prepare` picks the random values of one lookup (and reads what it needs, untimed); the
    lookup it returns is timed, `runs` times after one untimed run that plans the statement."""
    await (await prepare(rng))()
    timing = Timing(name, [], [])
    for _ in range(runs):
        query = await prepare(rng)
        started = time.perf_counter()
        count = await query()
        timing.ms.append((time.perf_counter() - started) * 1000)
        timing.rows.append(count)
    return timing


async def measure(pool: asyncpg.Pool, args: argparse.Namespace, end: dt.datetime) -> list[Timing]:
    start = end - dt.timedelta(days=DAYS)
    providers = [f"wall{n:02}" for n in range(PROVIDERS)]

    def user(rng: random.Random) -> str:
        return f"user-{rng.randrange(args.users)}"

    def moment(rng: random.Random, low: float, high: float) -> dt.datetime:
        return start + dt.timedelta(days=DAYS) * rng.uniform(low, high)

    def page(**where: Any) -> Query:
        async def query() -> int:
            return len(await read.postbacks(pool, read.LogFilter(**where), PAGE))

        return query

    async def by_user(rng: random.Random) -> Query:
        return page(user_id=user(rng))

    async def by_transaction(rng: random.Random) -> Query:
        return page(transaction=f"tx-{rng.randrange(1, args.rows + 1)}")

    async def user_since(rng: random.Random) -> Query:
        return page(user_id=user(rng), since=moment(rng, 0.5, 0.95))

    async def by_provider(rng: random.Random) -> Query:
        return page(provider=rng.choice(providers))

    async def rejected(rng: random.Random) -> Query:
        return page(outcome="rejected")

    async def window(rng: random.Random) -> Query:
        since = moment(rng, 0.4, 0.6)
        return page(since=since, until=since + dt.timedelta(hours=1))

    async def second_page(rng: random.Random) -> Query:
        provider = rng.choice(providers)
        first = await read.postbacks(pool, read.LogFilter(provider=provider), PAGE)
        return page(provider=provider, before=(first[-1]["received_at"], first[-1]["id"]))

    async def summary(rng: random.Random) -> Query:
        async def query() -> int:
            day = end - dt.timedelta(hours=24)
            counts, _ = await read.postback_summary(pool, providers, day)
            return sum(int(r["n"]) for r in counts)

        return query

    rng = random.Random()
    timings = []
    for name, prepare in (
        ("user", by_user),
        ("transaction", by_transaction),
        ("user + since", user_since),
        ("provider (first page)", by_provider),
        ("provider (second page, cursor)", second_page),
        ("outcome=rejected (first page)", rejected),
        ("since/until, 1 h in the middle", window),
        ("summary, last 24 h (count rows)", summary),
    ):
        say(f"  timing {name}")
        timings.append(await timed(name, args.runs, prepare, rng))
    return timings


async def sizes(dsn: str) -> list[str]:
    conn = await connect(dsn, wait=10)
    try:
        table = await conn.fetchval(
            "SELECT sum(pg_table_size(relid))::bigint FROM pg_partition_tree('postback_log')"
        )
        indexes = await conn.fetch(_SIZES)
        total = await conn.fetchval(_TOTAL)
    finally:
        await conn.close()
    mib = 1024 * 1024
    lines = [f"{'postback_log (table, TOAST included)':<38}{table / mib:>10,.0f} MiB"]
    lines += [f"{'  index ' + r['name']:<38}{r['bytes'] / mib:>10,.0f} MiB" for r in indexes]
    lines.append(f"{'total':<38}{total / mib:>10,.0f} MiB")
    return lines


async def main_async(args: argparse.Namespace) -> int:
    started = time.monotonic()
    server = await asyncio.to_thread(
        pgtools.Server, args.database_url, ROOT / ".data" / "bench-postgres"
    )
    try:
        if not args.database_url:
            await server.drop_stale()
        dsn = await server.create("postback_log")
        try:
            end = dt.datetime.now(dt.UTC)
            say(f"filling postback_log with {args.rows:,} rows ({args.users:,} users)")
            seconds = await fill(dsn, args.rows, args.users, end)
            pool = await create_pool(dsn, min_size=1, max_size=2, wait_limit=10)
            try:
                timings = await measure(pool, args, end)
            finally:
                await pool.close()
            size_lines = await sizes(dsn)
        finally:
            await server.drop(dsn)
    finally:
        await asyncio.to_thread(server.close)
    print(f"\npostback log lookups over {args.rows:,} rows ({args.users:,} users, {DAYS} days)")
    print(f"database: {server.where}; filled, indexed and analyzed in {seconds:.0f} s")
    print(f"each lookup {args.runs} times with other random values, pages of {PAGE} rows\n")
    print(f"{'lookup':<38}{'median ms':>10}{'p95 ms':>10}{'rows':>10}  (min-max)")
    for timing in timings:
        print(timing.line())
    print()
    print("\n".join(size_lines))
    minutes, rest = divmod(round(time.monotonic() - started), 60)
    print(f"\ntotal time: {minutes} min {rest} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
