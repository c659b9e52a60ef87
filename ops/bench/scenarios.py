"""The scenarios of one run of the benchmark, each on a database of its own (but the two logs
loaded once for every run): pgbench, ingest, ingest on the large log, debits against pgbench
running their SQL, wallet reads against bare aiohttp, latency at 50 % and 80 % of the peak, and
verify."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import random
import sys
import time
import traceback
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import loadgen
import pgtools
import procs
import profiling
import report

MAX_RATE = 20_000  # postbacks/s the pre-generated requests allow for in closed loop
# Open loop: connections per client, so that the load generator's connections are never what
# requests queue for (a wall opens as many as it needs); latency still counts from the due time.
OPEN_LOOP_CONNECTIONS = 4
AUTH = {"Authorization": f"Bearer {procs.READ_KEY}"}
SPEND_AUTH = {"Authorization": f"Bearer {procs.SPEND_KEY}"}
MAX_DEBIT_CENTS = 99_999  # a debit takes 0.01 to 999.99, as a postback credits


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def signed_postbacks(
    rng: random.Random, users: int, port: int, n: int
) -> tuple[list[loadgen.Request], list[str]]:
    """`n` signed Medioot credits with fresh random transids, over `users` users."""
    secret = procs.MEDIOOT_SECRET
    reqs, subids = [], []
    for _ in range(n):
        subid = f"user-{rng.randrange(users)}"
        transid = f"{rng.getrandbits(80):020x}"
        cents = rng.randint(1, 99_999)
        reward = f"{cents // 100}.{cents % 100:02d}"
        sig = hashlib.md5(f"{subid}{transid}{reward}{secret}".encode()).hexdigest()
        path = (
            f"/postbacks/medioot?subid={subid}&transid={transid}&reward={reward}"
            f"&status=1&signature={sig}"
        )
        reqs.append(loadgen.request(procs.HOST, port, path))
        subids.append(subid)
    return reqs, subids


class LazyPostbacks:
    """`n` signed postbacks as `signed_postbacks` makes them, each made when it is asked for:
    the soak sends too many to hold them all."""

    def __init__(self, rng: random.Random, users: int, port: int, n: int) -> None:
        self.rng, self.users, self.port, self.n = rng, users, port, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int, /) -> loadgen.Request:
        if not 0 <= i < self.n:
            raise IndexError(i)
        reqs, _ = signed_postbacks(self.rng, self.users, self.port, 1)
        return reqs[0]


def slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of (x, y) points; NaN with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return math.nan
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


SOAK_WARMUP = 30.0  # seconds of a soak before its memory counts (at most 10 % of it)
SOAK_EVERY = 5.0  # seconds between RSS samples (at most a tenth of the soak)
SHORT_SOAK = 300.0  # seconds: a shorter soak's slope says more about warm-up than about leaks


def debits(
    rng: random.Random, users: int, port: int, n: int
) -> tuple[list[loadgen.Request], list[str]]:
    """`n` debits, each with an Idempotency-Key of its own, over users user-0 ... user-(users-1)
    (the funded ones)."""
    reqs, subjects = [], []
    for _ in range(n):
        user = f"user-{rng.randrange(users)}"
        cents = rng.randint(1, MAX_DEBIT_CENTS)
        body = f'{{"amount": "{cents // 100}.{cents % 100:02d}"}}'.encode()
        own = {"Idempotency-Key": f"{rng.getrandbits(80):020x}"}
        path = f"/v1/wallets/{user}/debits"
        reqs.append(
            loadgen.request(procs.HOST, port, path, SPEND_AUTH, method="POST", body=body, own=own)
        )
        subjects.append(user)
    return reqs, subjects


def funding(users: int, debits: int) -> Decimal:
    """What each user is credited before the debits: the most they could all take from one user
    if each took 999.99, with ample room for the luck of the draw (a refusal is a failure)."""
    per_user = 2 * (debits // users) + 20
    return Decimal(per_user * (MAX_DEBIT_CENTS + 1)) / 100


@dataclass
class Bench:
    args: argparse.Namespace
    server: pgtools.Server
    pgbench: Path
    workers: int | None  # passed to serve --workers, or None when serve has no such flag
    logs: Path
    postgres_pid: int | None = None  # when the server runs here: its CPU use is reported
    large_db: str | None = None
    verify_db: str = ""
    funded_db: str = ""  # every user funded for the debits, copied for each debit scenario
    rng: random.Random = field(default_factory=random.Random)
    py_spy: str | None = None  # with --profile: the py-spy binary
    profiles: dict[str, list[Path]] = field(default_factory=dict)  # stacks' files by scenario
    profile_failures: list[str] = field(default_factory=list)

    def service(self, dsn: str, log: Path) -> AbstractAsyncContextManager[procs.Running]:
        """The service as this benchmark runs it: --workers, --pool-size, --max-inflight."""
        a = self.args
        return procs.service(dsn, log, self.workers, a.pool_size, max_inflight=a.max_inflight)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    # --- requests --------------------------------------------------------------------------------

    def postbacks(self, port: int, n: int) -> tuple[list[loadgen.Request], list[str]]:
        return signed_postbacks(self.rng, self.args.users, port, n)

    def reads(self, port: int, users: list[str], n: int) -> list[loadgen.Request]:
        distinct = [loadgen.request(procs.HOST, port, f"/v1/wallets/{u}", AUTH) for u in users]
        return [distinct[i % len(distinct)] for i in range(n)]

    def capacity(self) -> int:
        return int(MAX_RATE * (self.args.warmup + self.args.duration)) + 1000

    # --- measurements ----------------------------------------------------------------------------

    def roots(self, name: str, server: procs.Running) -> dict[str, int]:
        """The processes whose CPU use is reported: the server, and PostgreSQL for the service."""
        found = {name: server.pid}
        if self.postgres_pid is not None and name == "service":
            found["postgres"] = self.postgres_pid
        return found

    async def metered(
        self,
        name: str,
        server: procs.Running,
        load: Awaitable[loadgen.Result],
        profiled: str = "",
    ) -> loadgen.Result:
        """`load`, with the CPU use of the server (and PostgreSQL's) and the largest RSS of each
        of its workers over its window (warm-up excluded); with --profile and `profiled` (the
        scenario's name), py-spy on each worker over the window."""
        a = self.args
        meter = asyncio.create_task(procs.cpu_cores(self.roots(name, server), a.warmup, a.duration))
        rss = asyncio.create_task(procs.max_rss(server.pid, a.warmup, a.duration))
        spy = None
        if self.py_spy and profiled:
            pids = [p.pid for p in procs.workers(server.pid)]
            label = f"profile-{profiled}-{self.rng.getrandbits(24):06x}"
            spy = asyncio.create_task(
                profiling.record(self.py_spy, pids, a.warmup, a.duration, self.logs, label)
            )
        result = await load
        result.cpu = await meter
        result.rss = await rss
        if spy is not None:
            files, failures = await spy
            self.profiles.setdefault(profiled, []).extend(files)
            self.profile_failures.extend(failures)
        return result

    async def closed(
        self, name: str, server: procs.Running, items: list[loadgen.Request], profiled: str = ""
    ) -> loadgen.Result:
        a = self.args
        async with loadgen.Clients(a.client, procs.HOST, server.port, a.clients, AUTH) as conns:
            load = loadgen.closed_loop(conns, items, a.warmup, a.duration)
            return await self.metered(name, server, load, profiled)

    async def served(self, result: loadgen.Result, log: Path, prefix: str) -> None:
        """Add the service's own timings from its log (complete once it has stopped)."""
        result.served_ms = await asyncio.to_thread(procs.served_ms, log, result.window, prefix)

    async def ingest(
        self, dsn: str, label: str, profiled: str = ""
    ) -> tuple[loadgen.Result, list[str]]:
        log = self.log(label)
        async with self.service(dsn, log) as server:
            items, subids = self.postbacks(server.port, self.capacity())
            await pgtools.checkpoint(dsn)
            result = await self.closed("service", server, items, profiled)
        await self.served(result, log, "/postbacks/")
        return result, sorted({subids[i] for i in result.ok_items})

    async def debit(self, dsn: str, label: str) -> loadgen.Result:
        log = self.log(label)
        async with self.service(dsn, log) as server:
            items, _ = debits(self.rng, self.args.users, server.port, self.capacity())
            await pgtools.checkpoint(dsn)
            a = self.args
            async with loadgen.Clients(
                a.client, procs.HOST, server.port, a.clients, SPEND_AUTH
            ) as conns:
                load = loadgen.closed_loop(conns, items, a.warmup, a.duration)
                result = await self.metered("service", server, load, "debits")
        await self.served(result, log, "/v1/wallets/{user_id}/debits")
        return result

    async def fund(self) -> float:
        """Fund every user once for every run's debits (`funded_db`); the seconds it took."""
        self.funded_db = await self.server.create("funded")
        amount = funding(self.args.users, self.capacity())
        return await pgtools.fund(self.funded_db, self.args.users, amount)

    async def funded(self, label: str) -> str:
        """A fresh copy of the database whose users are funded for the debits."""
        dsn = await self.server.copy(self.funded_db, label)
        await pgtools.checkpoint(dsn)
        return dsn

    async def rate(self, dsn: str, label: str, rate: float) -> loadgen.Result:
        a, log = self.args, self.log(label)
        async with self.service(dsn, log) as server:
            items, _ = self.postbacks(server.port, int(rate * (a.warmup + a.duration)) + 1)
            await pgtools.checkpoint(dsn)
            n = a.clients * OPEN_LOOP_CONNECTIONS
            async with loadgen.Clients(a.client, procs.HOST, server.port, n, AUTH) as conns:
                load = loadgen.open_loop(conns, items, rate, a.warmup, a.duration)
                result = await self.metered("service", server, load)
        await self.served(result, log, "/postbacks/")
        return result

    async def soak(self, rate: float) -> tuple[report.Figures, list[str]]:
        """The service under a steady open-loop postback load at `rate` for --soak seconds on
        a database of its own, each worker's RSS sampled all along: RSS after the warm-up, at
        the end, and its growth per 10 minutes (the least-squares slope of the samples)."""
        a, log = self.args, self.log("soak")
        seconds = float(a.soak)
        warm = min(SOAK_WARMUP, 0.1 * seconds)
        every = min(SOAK_EVERY, seconds / 10)
        samples: dict[int, list[tuple[float, float]]] = {}
        dsn = await self.server.create("soak")
        try:
            async with self.service(dsn, log) as server:
                total = int(rate * seconds) + 1
                items = LazyPostbacks(self.rng, a.users, server.port, total)
                await pgtools.checkpoint(dsn)

                async def take(at: float) -> None:
                    for pid, mib in (await asyncio.to_thread(procs.rss_mib, server.pid)).items():
                        samples.setdefault(pid, []).append((at, mib))

                async def sample() -> None:
                    started = time.monotonic()
                    while True:
                        at = time.monotonic() - started
                        if at >= warm:
                            await take(at)
                        await asyncio.sleep(every)

                n = a.clients * OPEN_LOOP_CONNECTIONS
                async with loadgen.Clients(a.client, procs.HOST, server.port, n, AUTH) as conns:
                    sampler = asyncio.create_task(sample())
                    try:
                        result = await loadgen.open_loop(conns, items, rate, 0.0, seconds)
                        await take(seconds)  # one last sample at the end of the load
                    finally:
                        sampler.cancel()
        finally:
            await self.server.drop(dsn)
        f = report.Figures()
        growth = {pid: slope(points) * 600 for pid, points in samples.items()}
        if samples:
            f["soak_start"] = max(points[0][1] for points in samples.values())
            f["soak_end"] = max(points[-1][1] for points in samples.values())
            f["soak_growth"] = max(growth.values())
        f["soak_errors"] = result.errors
        notes = [
            f"soak: {seconds:g} s at {rate:,.0f} postbacks/s (50 % of run 1's peak), open loop;"
            f" {result.rate:,.0f}/s answered 2xx; p50 {result.percentile(0.5):.1f} ms,"
            f" p99 {result.percentile(0.99):.1f} ms from the due time"
            + (f"; ERRORS: {result.error_text()}" if result.errors else ""),
            f"soak memory: RSS sampled every {every:g} s after {warm:g} s of warm-up, per worker",
        ]
        if seconds < SHORT_SOAK:
            notes[-1] += f" (under {SHORT_SOAK:g} s, the slope is warm-up's, not a leak's)"
        for pid, points in sorted(samples.items()):
            notes.append(
                f"  worker {pid}: {points[0][1]:.1f} MiB at {points[0][0]:.0f} s,"
                f" {points[-1][1]:.1f} MiB at {points[-1][0]:.0f} s, {len(points)} samples,"
                f" growth {growth[pid]:+.2f} MiB per 10 min"
            )
        for line in notes:
            say(line)
        return f, notes

    async def run(self, n: int) -> tuple[report.Figures, list[str]]:
        a, f, notes = self.args, report.Figures(), []
        errors = 0

        def record(name: str, result: loadgen.Result, service: bool = True) -> None:
            nonlocal errors
            errors += result.errors
            if service and result.rss:
                f["rss"] = max(f.get("rss", 0.0), *result.rss.values())
            note = f"{name}: {result.rate:,.0f}/s answered 2xx"
            if result.errors:
                note += f"; ERRORS: {result.error_text()}"
            if result.exhausted:
                note += "; ran out of pre-generated requests: the figure is a lower bound"
            if result.latencies:
                p50, p99 = result.percentile(0.5), result.percentile(0.99)
                note += f"; p50 {p50:.1f} ms, p99 {p99:.1f} ms from the due time"
            if result.served_ms:
                p50, p99 = (loadgen.percentile(result.served_ms, s) for s in (0.5, 0.99))
                note += f"; the service's own time (its log) p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            note += f"; {cpu_text(result.cpu, result.client_cpu)}"
            if result.rss:
                mib = ", ".join(f"{m:.1f}" for m in result.rss.values())
                note += f"; max RSS per worker, MiB: {mib}"
            notes.append(note)
            say(f"[run {n}] {notes[-1]}")

        took: list[str] = []  # each step's wall time, to tell what a longer run would take

        async def step(name: str, coro: Awaitable[None]) -> None:
            started = time.monotonic()
            try:
                await coro
            except Exception as exc:
                nonlocal errors
                errors += 1
                notes.append(f"{name}: FAILED: {exc!r}")
                say(traceback.format_exc().rstrip())
                say(f"[run {n}] {notes[-1]}")
            finally:
                took.append(f"{name} {time.monotonic() - started:.0f}")

        async def pgbench(debits: bool = False) -> None:
            """The postback's SQL, or with `debits` the debit's, on funded wallets."""
            key, what, script = "pgbench", "", pgtools.PGBENCH_SCRIPT
            if debits:
                key, what, script = "pgbench_debits", ", debits", pgtools.DEBIT_SCRIPT
                dsn = await self.funded(key)
            else:
                dsn = await self.server.create(key)
            cpu: dict[str, float] = {}
            try:
                await pgtools.checkpoint(dsn)
                args = (self.pgbench, dsn, a.clients)
                if a.warmup > 0:
                    await pgtools.pgbench(*args, a.warmup, a.users, a.pgbench_notify, script)
                seconds = max(1, round(a.duration))  # pgbench -T takes whole seconds
                meter = None
                if self.postgres_pid is not None:
                    roots = {"postgres": self.postgres_pid}
                    meter = asyncio.create_task(procs.cpu_cores(roots, 0.2, seconds - 0.4))
                res = await pgtools.pgbench(*args, a.duration, a.users, a.pgbench_notify, script)
                if meter is not None:
                    cpu = await meter
            finally:
                await self.server.drop(dsn)
            f[key] = res.tps
            failed = f"; {res.failed} failed transactions" if res.failed else ""
            notify = " (with pg_notify)" if a.pgbench_notify else ""
            notes.append(f"pgbench{what}{notify}: {res.tps:,.0f} tx/s, {a.clients} clients{failed}")
            if cpu:
                notes[-1] += f"; {cpu_text(cpu, None)}"
            say(f"[run {n}] {notes[-1]}")

        ingest_dsn = ""
        users: list[str] = []

        async def ingest() -> None:
            nonlocal ingest_dsn, users
            ingest_dsn = await self.server.create("ingest")
            result, users = await self.ingest(ingest_dsn, f"run{n}-ingest", "ingest")
            f["ingest"] = result.rate
            record("ingest (service, empty log)", result)

        async def ingest_large() -> None:
            assert self.large_db is not None
            result, _ = await self.ingest(self.large_db, f"run{n}-ingest-large")
            f["ingest_large"] = result.rate
            record("ingest (service, large log)", result)

        async def debit() -> None:
            dsn = await self.funded("debits")
            try:
                result = await self.debit(dsn, f"run{n}-debits")
            finally:
                await self.server.drop(dsn)
            f["debits"] = result.rate
            record("debits (service)", result)

        async def reads() -> None:
            if not users:
                raise RuntimeError("no wallet to read: the ingest recorded nothing")
            order = list(users)
            self.rng.shuffle(order)
            log = self.log(f"run{n}-reads")
            async with self.service(ingest_dsn, log) as server:
                items = self.reads(server.port, order, self.capacity())
                result = await self.closed("service", server, items, "reads")
            await self.served(result, log, "/v1/wallets/")
            f["reads"] = result.rate
            record("wallet reads (service)", result)
            bare_log = self.log(f"run{n}-bare")
            async with procs.bare(ingest_dsn, bare_log, self.workers, a.pool_size) as server:
                items = self.reads(server.port, order, self.capacity())
                result = await self.closed("bare server", server, items)
            f["bare"] = result.rate
            record("wallet reads (bare aiohttp + asyncpg)", result, service=False)

        async def latency(share: float) -> None:
            pct = round(share * 100)
            peak = f.get("ingest", math.nan)
            if math.isnan(peak) or peak <= 0:
                raise RuntimeError("no peak rate measured")
            dsn = await self.server.create(f"rate{pct}")
            try:
                result = await self.rate(dsn, f"run{n}-rate{pct}", share * peak)
            finally:
                await self.server.drop(dsn)
            f[f"p50_{pct}"], f[f"p99_{pct}"] = result.percentile(0.5), result.percentile(0.99)
            record(f"{pct} % of peak = {share * peak:,.0f}/s", result)

        async def verify() -> None:
            eps, events, ok, summary = await pgtools.time_verify(self.verify_db)
            f["verify"] = eps
            notes.append(f"verify: {events:,} events, {eps:,.0f} events/s ({summary})")
            if not ok:
                notes[-1] += ": THE LOG DOES NOT VERIFY"
            say(f"[run {n}] {notes[-1]}")

        # pgbench and the service's ingest back to back, then the large log, then pgbench and
        # the service's debits, so that each ratio compares measurements taken as close
        # together as the machine allows.
        await step("pgbench", pgbench())
        await step("ingest", ingest())
        if self.large_db is not None:
            await step("ingest, large log", ingest_large())
        await step("pgbench, debits", pgbench(debits=True))
        await step("debits", debit())
        await step("wallet reads", reads())
        if ingest_dsn:
            await self.server.drop(ingest_dsn)
        await step("50 % of peak", latency(0.5))
        await step("80 % of peak", latency(0.8))
        await step("verify", verify())
        notes.append(f"wall time of each step, s: {', '.join(took)}")
        f["errors"] = errors
        report.derive(f)
        return f, notes


def cpu_text(cpu: dict[str, float], client: float | None) -> str:
    """E.g. "CPU in cores: service 0.95, postgres 0.70, load generator 0.09"."""
    parts = [f"{name} {cores:.2f}" for name, cores in cpu.items()]
    if client is not None:
        parts.append(f"load generator {client:.2f}")
    return "CPU in cores: " + ", ".join(parts)
