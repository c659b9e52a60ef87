"""Postback latency with and without a flood of /metrics scrapes, side by side.

/metrics needs no key, so anyone who reaches it can scrape it as fast as they like. This starts
the service on a fresh database and measures signed Medioot postbacks in open loop at a steady
rate (latency from each request's due time, as in bench.py), first alone, then while `--scrapers`
connections fetch /metrics back to back on the same process. It prints the median and p99
latency of each, and how many scrapes per second the service answered meanwhile.

    python ops/bench/scrape_flood.py                       # 3 runs of 10 s each way
    python ops/bench/scrape_flood.py --quick               # a smoke test, a few seconds
    python ops/bench/scrape_flood.py --metrics-max-age 0   # a rendering per scrape (shared
                                                           # only by concurrent ones)
    python ops/bench/scrape_flood.py --path /healthz       # any flood, for comparison
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys

import bare_server
import loadgen
import pgtools
import procs
from scenarios import AUTH, OPEN_LOOP_CONNECTIONS, say, signed_postbacks

ROOT = procs.ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    pgtools.add_database_argument(p)
    p.add_argument("--rate", type=float, default=200.0, help="postbacks/s (default 200)")
    p.add_argument("--clients", type=int, default=4, help="postback clients (default 4)")
    p.add_argument("--scrapers", type=int, default=64, help="scraping connections (default 64)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 10)")
    p.add_argument("--warmup", type=float, help="seconds of load before each (default 2)")
    p.add_argument("--runs", type=int, help="repeat both measurements (default 3)")
    p.add_argument(
        "--metrics-max-age", type=float, help="server.metrics_max_age (default: the service's)"
    )
    p.add_argument(
        "--path",
        default="/metrics",
        help="what the flood fetches (default /metrics; /healthz gives the cost of any flood\n"
        "of cheap requests, to compare with)",
    )
    p.add_argument("--quick", action="store_true", help="tiny durations (smoke test)")
    args = p.parse_args(argv)
    defaults = {"duration": 1.0, "warmup": 0.3, "runs": 1} if args.quick else {}
    for name, value in {"duration": 10.0, "warmup": 2.0, "runs": 3, **defaults}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.clients, args.scrapers, args.runs) < 1 or args.duration <= 0 or args.rate <= 0:
        p.error("--clients, --scrapers and --runs must be >= 1; --duration and --rate > 0")
    return args


async def measure(
    args: argparse.Namespace, port: int, flood: bool, rng: random.Random
) -> tuple[loadgen.Result, loadgen.Result | None]:
    """Postbacks at `args.rate` in open loop, with the scrape flood alongside if `flood`."""
    total = int(args.rate * (args.warmup + args.duration)) + 1
    items, _ = signed_postbacks(rng, 100_000, port, total)
    n = args.clients * OPEN_LOOP_CONNECTIONS
    async with loadgen.Clients("raw", procs.HOST, port, n, AUTH) as conns:
        postbacks = loadgen.open_loop(conns, items, args.rate, args.warmup, args.duration)
        if not flood:
            return await postbacks, None
        scrape = loadgen.request(procs.HOST, port, args.path)
        scrapes = [scrape] * 2_000_000  # closed loop ends with its window, long before these
        async with loadgen.Clients("raw", procs.HOST, port, args.scrapers, {}) as scrapers:
            flooding = loadgen.closed_loop(scrapers, scrapes, args.warmup, args.duration)
            answered, scraped = await asyncio.gather(postbacks, flooding)
            return answered, scraped


async def main_async(args: argparse.Namespace) -> int:
    server = await asyncio.to_thread(
        pgtools.Server, args.database_url, ROOT / ".data" / "bench-postgres"
    )
    logs = ROOT / ".data" / "bench-logs" / f"scrape-flood-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    extra = "" if args.metrics_max_age is None else f"metrics_max_age = {args.metrics_max_age}"
    rng = random.Random()
    rows: list[tuple[float, float, float, float, float]] = []
    errors = 0
    try:
        for n in range(1, args.runs + 1):
            dsn = await server.create("flood")
            try:
                log = logs / f"run{n}.log"
                async with procs.service(dsn, log, None, None, server=extra) as running:
                    quiet, _ = await measure(args, running.port, False, rng)
                    flooded, scrapes = await measure(args, running.port, True, rng)
            finally:
                await server.drop(dsn)
            assert scrapes is not None
            errors += quiet.errors + flooded.errors + scrapes.errors
            row = (
                quiet.percentile(0.5),
                quiet.percentile(0.99),
                flooded.percentile(0.5),
                flooded.percentile(0.99),
                scrapes.rate,
            )
            rows.append(row)
            say(
                f"[run {n}] alone p50 {row[0]:.1f} ms, p99 {row[1]:.1f} ms; under"
                f" {args.scrapers} scrapers p50 {row[2]:.1f} ms, p99 {row[3]:.1f} ms;"
                f" {row[4]:,.0f} scrapes/s answered"
                + (f"; ERRORS: {quiet.error_text()} {flooded.error_text()}" if errors else "")
            )
    finally:
        await asyncio.to_thread(server.close)
    medians = [statistics.median(column) for column in zip(*rows, strict=True)]
    print(f"\npostback latency at {args.rate:g}/s, alone and under a flood of GET {args.path}")
    print(f"({args.runs} runs of {args.duration:g} s; {args.scrapers} scraping connections)")
    print(f"{'':24}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'alone':24}{medians[0]:>10.1f}{medians[1]:>10.1f}")
    print(f"{'under the scrape flood':24}{medians[2]:>10.1f}{medians[3]:>10.1f}")
    print(f"scrapes answered during the flood: {medians[4]:,.0f}/s (median)")
    if errors:
        print(f"ERRORS: {errors} answers other than 200")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=bare_server.event_loop) as runner:
            return runner.run(main_async(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
