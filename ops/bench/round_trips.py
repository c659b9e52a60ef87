"""What a round trip to PostgreSQL costs on this machine, and what a write batch costs per
postback as batches grow: the two figures that explain the service's ingest rate here.

1. `SELECT 1` on one asyncpg connection, one after the other: the client's CPU time and the
   wall time per round trip (a machine whose system calls or cross-core wake-ups are slow, a
   virtual machine for one, shows it here first).
2. The write path itself (`service.db.write.append`) with batches of 1 to 64 signed Medioot
   credits, normalised by the built-in Medioot profile as the handler does: the client's CPU
   per postback and the wall time per batch. A batch is six round trips whatever its size
   (BEGIN, the locks with the signatures, the settlements, the insert, the projections with the
   postback log, COMMIT), which is why group commit matters.

Each figure is the median of `--rounds` rounds.

    python ops/bench/round_trips.py
    python ops/bench/round_trips.py --database-url postgresql://...   # an existing server
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
import time

import asyncpg
import pgtools
import procs

from service.db import connection
from service.db.write import LogEntry, Submission, append
from service.domain.chain import ChainKey
from service.embedded import RUNTIME_ROLE
from service.providers import profile
from service.providers.base import Inbound
from service.settings import Provider

BATCHES = (1, 2, 4, 8, 16, 32, 64)
POSTBACKS_PER_ROUND = 512  # postbacks per round of each batch size


def medioot() -> tuple[profile.ProfileWall, Provider]:
    raw = profile._builtin("medioot")
    wall = profile.ProfileWall.of(
        profile.compile_profile(profile.decode(raw, "medioot"), "medioot")
    )
    return wall, Provider(name="medioot", protocol="medioot", secret=procs.MEDIOOT_SECRET)


def credits(rng: random.Random, n: int) -> list[Submission]:
    """`n` signed Medioot credits with fresh transaction ids, as the handler hands them over."""
    wall, provider = medioot()
    found = []
    for _ in range(n):
        subid, transid = f"user-{rng.randrange(10_000)}", f"{rng.getrandbits(80):020x}"
        cents = rng.randint(1, 99_999)
        reward = f"{cents // 100}.{cents % 100:02d}"
        text = f"{subid}{transid}{reward}{procs.MEDIOOT_SECRET}"
        query = (
            ("subid", subid),
            ("transid", transid),
            ("reward", reward),
            ("status", "1"),
            ("signature", hashlib.md5(text.encode()).hexdigest()),
        )
        inbound = Inbound(method="GET", query=query, content_type="", body=b"", client_ip=None)
        log = LogEntry(
            request_id="bench", provider="medioot", method="GET", client_ip=None, params={}
        )
        found.append(Submission(log, wall.answer, postback=wall.normalise(provider, inbound)))
    return found


async def round_trips(dsn: str, rounds: int, n: int = 2000) -> tuple[float, float]:
    """Median client CPU and wall time (µs) of one `SELECT 1`."""
    conn = await asyncpg.connect(dsn)
    cpu, wall = [], []
    try:
        for _ in range(rounds):
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                await conn.fetchval("SELECT 1")
            cpu.append((time.process_time() - c0) / n * 1e6)
            wall.append((time.perf_counter() - w0) / n * 1e6)
    finally:
        await conn.close()
    return statistics.median(cpu), statistics.median(wall)


async def batches(dsn: str, rounds: int) -> list[tuple[int, float, float]]:
    """Per batch size: median client CPU per postback (µs) and wall time per batch (ms)."""
    pool = await connection.create_pool(
        connection.with_user(dsn, RUNTIME_ROLE),
        min_size=1,
        max_size=2,
        wait_limit=30,
        chain_key=ChainKey(procs.CHAIN_KEY),
    )
    rng, found = random.Random(7), []
    try:
        await append(pool, credits(rng, 8))  # statements prepared, caches warm
        for size in BATCHES:
            cpu, wall = [], []
            for _ in range(rounds):
                work = [credits(rng, size) for _ in range(POSTBACKS_PER_ROUND // size)]
                c0, w0 = time.process_time(), time.perf_counter()
                for batch in work:
                    await append(pool, batch)
                cpu.append((time.process_time() - c0) / POSTBACKS_PER_ROUND * 1e6)
                wall.append((time.perf_counter() - w0) / len(work) * 1e3)
            found.append((size, statistics.median(cpu), statistics.median(wall)))
    finally:
        await pool.close()
    return found


async def main_async(args: argparse.Namespace) -> int:
    server = await asyncio.to_thread(
        pgtools.Server, args.database_url, procs.ROOT / ".data" / "bench-postgres"
    )
    try:
        dsn = await server.create("round_trips")
        try:
            cpu, wall = await round_trips(dsn, args.rounds)
            print(f"SELECT 1: {cpu:.0f} µs of client CPU, {wall:.0f} µs wall per round trip")
            print("write path (signed Medioot credits), medians of", args.rounds, "rounds:")
            print("  batch  client CPU per postback, µs  wall per batch, ms")
            for size, per_postback, per_batch in await batches(dsn, args.rounds):
                print(f"  {size:5d}  {per_postback:28,.0f}  {per_batch:17.2f}")
        finally:
            await server.drop(dsn)
    finally:
        await asyncio.to_thread(server.close)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    pgtools.add_database_argument(p)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each figure (default 3)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
