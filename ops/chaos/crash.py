"""Fault scenario: crashes under load.

While the load generator sends signed postbacks (new credits, repeats, reversals, retries, many
users), and an internal service spends through a key with scope spend (debits, internal credits,
holds captured whole or in part or voided; each request sent again under the same
Idempotency-Key and body after a connection error or a 5xx, until it is answered: see
ops/chaos/spendload.py), the service is killed with SIGKILL at random moments (every 0.3-1.5 s
by default), 20 times, and started again at once each time. Then the PostgreSQL postmaster
itself is killed with SIGKILL under load and started again (crash recovery); the service must
reconnect by itself (if it does not, that is reported as a finding, and only then is it
restarted).

"The service" is the whole process group `python -m service serve [--workers N]` runs in: the
supervisor and its workers die together, as on a machine crash or an OOM kill of the unit.

Afterwards: every postback answered 200 (OK or DUP) has its event with the right user and
amount, no provider ID has two events or two OK answers, every wallet holds what its events make
under the money rules (a reversal takes back at most its credit, and one that arrives before its
credit waits for it; debits and captures take away, internal credits add), every spending request
answered 2xx has its one event (and none answered 409 has one), no retry was answered 422, every
replay is byte for byte the first answer, no wallet that never had a chargeback ever had less
than zero available, and `python -m service verify` exits 0. Exit 0 when nothing was lost, 1
otherwise, 2 when the scenario itself could not run.

    python ops/chaos/crash.py                      # 20 kills, 1 postmaster kill, 2 workers
    python ops/chaos/crash.py --kills 5 --workers 1 --pg-kills 2
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `ops.chaos` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.chaos import common, spendload
from ops.chaos.common import ChaosError, Report, Sent

NAME = "crash"


@dataclass
class Options:
    kills: int = 20
    pg_kills: int = 1
    gap_min: float = 0.3
    gap_max: float = 1.5
    workers: int = 2
    pool_max: int = 10
    timeout: float = 3.0
    rate: float = 300.0
    concurrency: int = 16
    users: int = 200
    seed: int = 1
    warmup: float = 1.0
    settle: float = 2.0
    recovery_limit: float = 30.0  # seconds the service gets to serve again by itself
    readers: bool = True  # also read the API and /readyz throughout (internal services do)
    spend_concurrency: int = 4  # spending clients (0: none)
    spend_rate: float = 60.0  # spending operations/s at most
    spend_users: int = 20  # wallets only the spending key credits (and a few postback users)


@dataclass
class PostmasterKill:
    pid: int
    killed_at: float
    gone_after: float  # the old postmaster's processes all gone
    accepting_after: float  # since the kill: pg_ctl start, crash recovery, first connection
    recovered_after: float | None  # since accepting: first postback sent then and answered 200
    ready_after: float | None  # since accepting: /readyz 200
    restarted_service: bool
    recovery_log: list[str] = field(default_factory=list)


async def scenario(
    dsn: str,
    pg: common.Postgres | None,
    opts: Options,
    log_dir: Path,
    say: common.Say,
) -> Report:
    """Run the crashes against database `dsn`; the postmaster kills need `pg` (owned)."""
    rng = random.Random(opts.seed)
    report = Report(NAME)
    service = common.Service(
        dsn, log_dir, workers=opts.workers, pool_max=opts.pool_max, timeout=opts.timeout
    )
    generator = common.LoadGenerator(
        service.url,
        users=opts.users,
        concurrency=opts.concurrency,
        rate=opts.rate,
        seed=opts.seed,
    )
    spendload.add_key(service.config)
    spender = spendload.SpendLoad(
        service.url,
        own_users=opts.spend_users,
        shared_users=generator.users[: max(1, opts.spend_users // 4)],
        concurrency=opts.spend_concurrency,
        rate=opts.spend_rate,
        seed=opts.seed,
    )
    auth = {"Authorization": f"Bearer {common.READ_KEY}"}
    readers = [
        common.Poller(f"{service.url}/readyz", interval=0.1),
        common.Poller(f"{service.url}/v1/events?limit=20", interval=0.02, headers=auth),
        common.Poller(
            f"{service.url}/v1/wallets/{generator.users[0]}", interval=0.02, headers=auth
        ),
    ]
    if not opts.readers:
        readers = []
    t0 = time.monotonic()
    restarts: list[float] = []
    per_kill: list[int] = []
    pg_kills: list[PostmasterKill] = []
    load_seconds = 0.0
    try:
        first_start = await service.start()
        say(f"service ready in {first_start:.2f} s at {service.url} ({opts.workers} worker(s))")
        load_started = time.monotonic()
        async with common.load(generator), spendload.running(spender):
            for reader in readers:
                reader.start()
            await asyncio.sleep(opts.warmup)
            for i in range(1, opts.kills + 1):
                await asyncio.sleep(rng.uniform(opts.gap_min, opts.gap_max))
                killed_at = time.monotonic()
                sent_before = len(generator.records)
                per_kill.append(await asyncio.to_thread(service.kill))
                service.spawn()
                restarts.append(await service.wait_ready() - killed_at)
                say(
                    f"kill -9 {i}/{opts.kills}: {per_kill[-1]} process(es) killed after"
                    f" {sent_before} requests; ready again in {restarts[-1]:.2f} s"
                )
            for _ in range(opts.pg_kills):
                if pg is None:
                    break
                await asyncio.sleep(rng.uniform(opts.gap_min, opts.gap_max) + 1.0)
                result = await kill_postmaster(pg, dsn, service, generator, opts, say)
                pg_kills.append(result)
            await asyncio.sleep(opts.settle)
            for reader in readers:
                await reader.stop()
            load_seconds = time.monotonic() - load_started
        say(
            f"load stopped: {len(generator.records)} postbacks, {len(spender.ops)} spending"
            f" requests in {load_seconds:.1f} s"
        )
        code = await asyncio.to_thread(service.stop)
        say(f"service stopped (SIGTERM): exit code {code}")
        audit = await common.audit(
            dsn, generator.records, service.config, len(generator.pending_at_end)
        )
        spent = await spendload.audit(dsn, spender.ops, len(spender.pending_at_end))
        # The postback audit's wallets know no spending; this check covers every wallet, its
        # postbacks under the same money rules, and the debits, captures and internal credits.
        audit.wallets_off = spent.wallets_off
    finally:
        for reader in readers:
            await reader.stop()
        await asyncio.to_thread(service.stop)
        generator.dump(log_dir / "requests.jsonl", t0)
        spender.dump(log_dir / "spending.jsonl", t0)
        for name, reader in zip(("readyz", "events", "wallet"), readers, strict=False):
            common.dump_probes(reader.probes, log_dir / f"reads-{name}.jsonl", t0)

    report.heading("what was done")
    report.add("server", pg.where if pg is not None else "given by --database-url")
    report.add("service", f"serve --workers {opts.workers}; kill -9 = SIGKILL to its process group")
    report.add("load", f"{opts.concurrency} clients, {opts.rate:g}/s cap, {opts.users} users")
    report.add("load duration", f"{load_seconds:.1f} s")
    report.add(
        "service kill -9 done", f"{len(restarts)} of {opts.kills}", len(restarts) == opts.kills
    )
    report.add("processes killed per kill", _spread(per_kill))
    report.add("first start (spawn -> /readyz 200)", f"{first_start:.2f} s")
    report.add("restart time (kill -> /readyz 200)", common.seconds(restarts))
    if pg is None and opts.pg_kills:
        report.add("postmaster kill -9", "skipped: the server is not ours (--database-url)")
    else:
        report.add("postmaster kill -9 done", f"{len(pg_kills)} of {opts.pg_kills}")
    for n, k in enumerate(pg_kills, 1):
        report.add(f"postmaster kill {n}: pid", k.pid)
        report.add("  its processes gone after", f"{k.gone_after:.2f} s")
        report.add("  accepting again after kill", f"{k.accepting_after:.2f} s (crash recovery)")
        report.add("  /readyz 200 after DB return", _maybe(k.ready_after))
        report.add(
            "  first OK/DUP after DB return",
            _maybe(k.recovered_after),
            k.recovered_after is not None and not k.restarted_service,
            f"within {opts.recovery_limit:g} s, no service restart",
        )
        for line in k.recovery_log:
            report.note(f"postmaster kill {n}: server log: {line}")
    restarted = sum(k.restarted_service for k in pg_kills)
    if pg_kills:
        report.add("service restarts needed after a DB crash", restarted, restarted == 0, "0")
    if readers:
        probes = [p for reader in readers for p in reader.probes if p.status or p.error]
        statuses = Counter(str(p.status) if p.status else p.error.split(":")[0] for p in probes)
        api_500 = sum(1 for p in probes if p.status == 500)
        report.add("API and /readyz reads", f"{len(probes)}: {_counts(statuses)}")
        report.add("  answered 500 (instead of 503)", api_500, api_500 == 0, "0")
    if opts.spend_concurrency:
        report.add(
            "spending load",
            f"{opts.spend_concurrency} clients, {opts.spend_rate:g}/s cap,"
            f" {len(spender.users)} users ({len(spender.own)} funded only by the spending key)",
        )
    common.report_audit(report, audit)
    if opts.spend_concurrency:
        spendload.report(report, spent)
    common.report_logs(report, service)
    report.data.update(audit=audit, spending=spent, spending_ops=spender.ops)
    report.data.update(restarts=restarts, postmaster_kills=pg_kills)
    report.note(
        f"every request: {log_dir / 'requests.jsonl'}, {log_dir / 'spending.jsonl'};"
        f" service logs: {log_dir}"
    )
    return report


async def kill_postmaster(
    pg: common.Postgres,
    dsn: str,
    service: common.Service,
    generator: common.LoadGenerator,
    opts: Options,
    say: common.Say,
) -> PostmasterKill:
    """kill -9 the postmaster under load, start it again, and watch the service recover."""
    offset = pg.log_size()
    killed_at = time.monotonic()
    pid, gone = await asyncio.to_thread(pg.kill_postmaster)
    say(f"postmaster {pid} killed -9; its processes gone after {gone:.2f} s; starting it again")
    await asyncio.to_thread(pg.start_server)
    up = await common.wait_accepting(dsn)
    say(f"PostgreSQL accepts connections {up - killed_at:.2f} s after the kill")
    ready: float | None = None
    recovered: float | None = None
    restarted = False
    end = up + opts.recovery_limit
    try:
        ready = await service.wait_ready(deadline=opts.recovery_limit) - up
        while recovered is None and time.monotonic() < end:
            hit = _first_acknowledged_since(generator.records, up)
            if hit is not None:
                recovered = hit.end - up
            else:
                await asyncio.sleep(0.05)
    except ChaosError as exc:
        say(f"FINDING: the service did not serve again by itself: {exc}")
    if recovered is None:
        say(
            f"FINDING: no postback acknowledged within {opts.recovery_limit:g} s of the database's"
            " return; restarting the service"
        )
        restarted = True
        await asyncio.to_thread(service.kill)
        service.spawn()
        await service.wait_ready()
    else:
        say(f"service serving again by itself {recovered:.2f} s after the database's return")
    log = pg.log_since(offset)
    keep = ("database system was", "automatic recovery", "redo ", "ready to accept")
    lines = [ln for ln in log if any(k in ln for k in keep)]
    cut = sum("terminating connection due to unexpected postmaster exit" in ln for ln in log)
    lines.insert(0, f"{cut} backends: terminating connection due to unexpected postmaster exit")
    return PostmasterKill(
        pid=pid,
        killed_at=killed_at,
        gone_after=gone,
        accepting_after=up - killed_at,
        recovered_after=recovered,
        ready_after=ready,
        restarted_service=restarted,
        recovery_log=lines[:8],
    )


def _first_acknowledged_since(records: list[Sent], since: float) -> Sent | None:
    """The first answered 200 among requests sent at or after `since` (records are in the
    order they were sent, so only the tail needs looking at)."""
    best: Sent | None = None
    for sent in reversed(records):
        if sent.start < since - 5:
            break
        if sent.start >= since and sent.acknowledged and (best is None or sent.end < best.end):
            best = sent
    return best


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common()) or "-"


def _spread(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _maybe(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crash", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(p)
    d = Options()
    p.add_argument("--kills", type=int, default=d.kills, help="service kills (default 20)")
    p.add_argument("--pg-kills", type=int, default=d.pg_kills, help="postmaster kills (default 1)")
    p.add_argument("--gap-min", type=float, default=d.gap_min, help="seconds (default 0.3)")
    p.add_argument("--gap-max", type=float, default=d.gap_max, help="seconds (default 1.5)")
    p.add_argument("--workers", type=int, default=d.workers, help="serve --workers (default 2)")
    p.add_argument("--rate", type=float, default=d.rate, help="requests/s cap (default 300)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="clients (default 16)")
    p.add_argument(
        "--spend-clients",
        type=int,
        default=d.spend_concurrency,
        help="spending clients (default 4; 0: no spending)",
    )
    p.add_argument(
        "--spend-rate",
        type=float,
        default=d.spend_rate,
        help="spending requests/s cap (default 60)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = common.parse(parser(), argv)
    opts = Options(
        kills=args.kills,
        pg_kills=args.pg_kills,
        gap_min=args.gap_min,
        gap_max=args.gap_max,
        workers=args.workers,
        rate=args.rate,
        concurrency=args.concurrency,
        spend_concurrency=args.spend_clients,
        spend_rate=args.spend_rate,
        users=args.users,
        seed=args.seed,
    )
    return common.run_scenario(NAME, _main(args, opts))


async def _main(args: argparse.Namespace, opts: Options) -> int:
    say = common.Say(NAME)
    with common.exclusive(NAME):
        pg = common.Postgres(args.database_url, common.POSTGRES_DATA / NAME)
        await asyncio.to_thread(pg.start)
        try:
            dsn = await pg.create_database(NAME)
            log_dir = common.run_dir(NAME)
            say(f"seed {opts.seed}; server {pg.where}; database {common.database_name(dsn)}")
            say(f"logs in {log_dir}")
            report = await scenario(dsn, pg if pg.owned else None, opts, log_dir, say)
            print(report.render(), flush=True)
            if report.ok and not args.keep:
                await pg.drop_database(dsn)
            else:
                say(f"database kept for inspection: {common.database_name(dsn)}")
            return 0 if report.ok else 1
        finally:
            await asyncio.to_thread(pg.close)


if __name__ == "__main__":
    sys.exit(main())
