"""The postback ledger's benchmark: one run prints, side by side, the service's ingest
rate against pgbench running the write path's SQL (16 clients), latency at 50 % and 80 % of
the service's peak rate, wallet reads against a bare aiohttp + asyncpg program running the
same SELECT as the same number of processes, debits against pgbench running a debit's SQL,
verify's speed on 1,000,000 events, ingest with a 10,000,000-event log against an empty one,
and the largest RSS of each worker under load. `--runs N` (default 3) repeats the table;
targets are judged on the medians. Once per benchmark, a soak (`--soak SECONDS`, default 600)
holds the service at 50 % of run 1's peak ingest and reports how each worker's RSS grows. The
service runs with `--workers 2`. Every scenario but the preloaded logs gets a database of its
own.

`--profile` attaches py-spy (not a dependency: `.venv/bin/pip install py-spy`) to each worker
during the ingest, debit and read measurements and prints the top functions by self and by
total time. A full default run takes about half an hour on a 2-core machine: some 8 minutes
to load the logs (1 M events through the chain trigger, 10 M without), under 3 per run
(measurements, service starts, and verify's 1 M events), and the 10-minute soak. Each run's
notes give each step's wall time.

    make bench                                  # the whole table, as the targets are set
    make bench BENCH_ARGS="--small --soak 0"    # no large log, no soak
    python ops/bench/bench.py --quick          # a smoke test, a few seconds per step
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import aiohttp
import bare_server
import pgtools
import procs
import profiling
import report
from scenarios import OPEN_LOOP_CONNECTIONS, Bench, say

ROOT = procs.ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    pgtools.add_database_argument(p)
    p.add_argument("--workers", type=int, default=2, help="serve --workers N (default 2)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 10)")
    p.add_argument("--warmup", type=float, help="seconds of load before each (default 2)")
    p.add_argument("--runs", type=int, help="repeat the whole table (default 3)")
    p.add_argument(
        "--large-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure ingest on a large log too (default on; --no-large-log skips it)",
    )
    p.add_argument(
        "--small", dest="large_log", action="store_false", help="the same as --no-large-log"
    )
    p.add_argument("--large-log-events", type=int, help="events in it (default 10,000,000)")
    p.add_argument("--events-for-verify", type=int, help="events verify reads (default 1,000,000)")
    p.add_argument(
        "--soak",
        type=float,
        help="seconds of the memory soak, once per benchmark (default 600; --quick 5; 0 skips)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy on each worker during ingest, debits and reads; top functions printed",
    )
    p.add_argument(
        "--users",
        type=int,
        help="distinct users, each funded for the debits (default 100,000; --quick 10,000)",
    )
    p.add_argument("--pool-size", type=int, help="database.pool_max_size (default: the service's)")
    p.add_argument(
        "--max-inflight",
        type=int,
        help="writer.max_inflight: batches each worker writes at once (default: the service's)",
    )
    p.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="load generator: raw asyncio HTTP/1.1 (default, cheapest) or aiohttp ClientSession",
    )
    p.add_argument(
        "--pgbench-notify",
        action="store_true",
        help="add the feed's pg_notify to pgbench's transaction (it serialises commits)",
    )
    p.add_argument("--quick", action="store_true", help="tiny durations and counts (smoke test)")
    args = p.parse_args(argv)
    quick = {
        "duration": 1.0,
        "warmup": 0.3,
        "runs": 1,
        "large_log_events": 20_000,
        "users": 10_000,
        "soak": 5.0,
    }
    full = {
        "duration": 10.0,
        "warmup": 2.0,
        "runs": 3,
        "large_log_events": 10_000_000,
        "users": 100_000,
        "soak": 600.0,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.events_for_verify is None:
        args.events_for_verify = 2_000 if args.quick else 1_000_000
    if min(args.clients, args.runs, args.users, args.workers) < 1 or args.duration <= 0:
        p.error("--clients, --runs, --users and --workers must be >= 1, --duration > 0")
    if args.soak < 0:
        p.error("--soak must be >= 0 (0 skips it)")
    return args


def loop_name() -> str:
    loop = type(asyncio.get_running_loop())
    return "uvloop" if loop.__module__.startswith("uvloop") else "asyncio"


def machine(args: argparse.Namespace, pg: dict[str, str], workers: str) -> list[str]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return [
        f"date: {now}",
        f"machine: {os.cpu_count()} cores, {model}, load average {load} at start",
        f"postgresql: {pg['server_version']} (fsync={pg['fsync']}, synchronous_commit="
        f"{pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']})",
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, event loop"
        f" {loop_name()}; service workers: {workers}; clients: {args.clients};"
        f" load generator: {args.client}; database.pool_max_size:"
        f" {args.pool_size or 'default'}; writer.max_inflight: {args.max_inflight or 'default'}",
        f"each measurement: {args.duration:g} s after {args.warmup:g} s of warm-up;"
        f" users: {args.users:,}; runs: {args.runs}; open loop (50 %/80 %) over"
        f" {args.clients * OPEN_LOOP_CONNECTIONS} connections; soak:"
        f" {f'{args.soak:g} s' if args.soak else 'skipped'}; large log:"
        f" {f'{args.large_log_events:,} events' if args.large_log else 'skipped'}",
    ]


KEEP_LOGS = 5  # the service logs of this many benchmarks are kept


def log_dir(parent: Path) -> Path:
    """A folder of this run's own for the servers' logs (benchmarks may run side by side, the
    smoke test among them); the oldest beyond KEEP_LOGS are removed."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = parent / f"{stamp}-{os.getpid()}"
    path.mkdir(parents=True)
    runs = sorted(p for p in parent.iterdir() if p.is_dir() and p.name[:8].isdigit())
    for old in runs[:-KEEP_LOGS]:
        shutil.rmtree(old, ignore_errors=True)
    return path


async def main_async(args: argparse.Namespace) -> int:
    started = time.monotonic()
    logs = log_dir(ROOT / ".data" / "bench-logs")
    workers: int | None = args.workers
    workers_text = str(args.workers)
    if not await asyncio.to_thread(procs.serve_has_workers):
        workers = None
        workers_text = "1 (this serve has no --workers)"
        if args.workers != 1:
            say(f"serve has no --workers yet: --workers {args.workers} is ignored")
    py_spy = None
    if args.profile:
        py_spy = profiling.py_spy()
        if py_spy is None:
            say(f"--profile needs py-spy, which is not installed: {profiling.INSTALL}")
            return 2
    server = await asyncio.to_thread(
        pgtools.Server, args.database_url, ROOT / ".data" / "bench-postgres"
    )
    try:
        pg = await server.settings()
        bench = Bench(args, server, pgtools.pgbench_binary(pg["server_version_num"]), workers, logs)
        bench.py_spy = py_spy
        bench.postgres_pid = await server.postmaster_pid()
        header = machine(args, pg, workers_text)
        header.append(f"database: {server.where}; pgbench: {bench.pgbench}")
        for line in header:
            say(line)
        if not args.database_url:
            await server.drop_stale()  # left by an interrupted run; ours alone, being embedded
        runs: list[report.Figures] = []
        notes: list[list[str]] = []
        once = report.Figures()
        soak_notes: list[str] = []
        try:
            setup = await prepare(bench)
            for n in range(1, args.runs + 1):
                figures, run_notes = await bench.run(n)
                runs.append(figures)
                notes.append(run_notes)
            if args.soak:
                once, soak_notes = await soak(bench, runs[0])
        finally:
            for dsn in (bench.large_db, bench.verify_db, bench.funded_db):
                if dsn:
                    await server.drop(dsn)
    finally:
        await asyncio.to_thread(server.close)
    text, _ = report.table(runs, args.large_log, once)
    print("\npostback-ledger benchmark (ops/bench)")
    print("\n".join(header))
    print(*setup, sep="\n")
    print()
    print(text)
    print()
    for n, run_notes in enumerate(notes, 1):
        print(f"run {n}:")
        print("\n".join(f"  {line}" for line in run_notes))
    if soak_notes:
        print("soak (once):")
        print("\n".join(f"  {line}" for line in soak_notes))
    if args.profile:
        print()
        for name, files in bench.profiles.items():
            print("\n".join(profiling.text(name, files)))
        for failure in bench.profile_failures:
            print(f"profile: {failure}")
        print(f"collapsed stacks (py-spy --format raw) in {logs}")
    errors = sum(int(r.get("errors", 0)) for r in runs) + int(once.get("soak_errors", 0))
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"\ntotal time: {minutes} min {seconds} s; service logs in {logs}")
    if errors:
        print(f"ERRORS: {errors} non-2xx answers or failed steps (see the notes above)")
    return 1 if errors else 0


async def prepare(bench: Bench) -> list[str]:
    """What is loaded once for every run: verify's log, the funded wallets the debits take
    from, and (unless --no-large-log) the large log."""
    a, lines = bench.args, []
    say(f"loading {a.events_for_verify:,} events for verify (through the chain trigger)")
    bench.verify_db = await bench.server.create("verify")
    seconds = await pgtools.load_events(
        bench.verify_db, a.events_for_verify, a.users, chained=True, say=say
    )
    lines.append(
        f"verify log: {a.events_for_verify:,} events loaded with INSERT ... SELECT through the"
        f" hash-chain trigger in {seconds:.1f} s; verify timed in-process (service.verify)"
    )
    say(f"funding {a.users:,} users for the debits (internal credits, through the chain trigger)")
    seconds = await bench.fund()
    lines.append(
        f"debits: {a.users:,} users funded with one internal credit each (SQL, through the"
        f" hash-chain trigger) in {seconds:.1f} s, copied for each debit scenario"
    )
    if a.large_log:
        say(f"loading {a.large_log_events:,} events for the large log (chain trigger off)")
        bench.large_db = await bench.server.create("large")
        seconds = await pgtools.load_events(
            bench.large_db, a.large_log_events, a.users, chained=False, say=say
        )
        lines.append(
            f"large log: {a.large_log_events:,} events loaded in {seconds:.0f} s (chain trigger"
            " off, placeholder hashes: verify would fail there; wallets built to match)"
        )
    return lines


async def soak(bench: Bench, first: report.Figures) -> tuple[report.Figures, list[str]]:
    """The soak at 50 % of run 1's peak ingest; a failure is noted and counted."""
    peak = first.get("ingest", math.nan)
    if math.isnan(peak) or peak <= 0:
        return report.Figures(soak_errors=1), ["soak: FAILED: no peak ingest rate in run 1"]
    say(f"soak: {bench.args.soak:g} s at {peak / 2:,.0f} postbacks/s")
    try:
        return await bench.soak(peak / 2)
    except Exception as exc:
        say(traceback.format_exc().rstrip())
        return report.Figures(soak_errors=1), [f"soak: FAILED: {exc!r}"]


async def guarded(args: argparse.Namespace) -> int:
    """`main_async`, cancelled by SIGTERM as by ^C: the servers it started are stopped."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await main_async(args)
    except asyncio.CancelledError:
        say("interrupted")
        return 130


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The load generator on the loop the servers use too (uvloop unless told otherwise): the
    # less CPU it takes, the less it takes from the servers it measures on a 2-core machine.
    try:
        with asyncio.Runner(loop_factory=bare_server.event_loop) as runner:
            return runner.run(guarded(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
