"""Fault scenario: a database outage under load.

Under steady load, PostgreSQL is stopped (`pg_ctl stop -m fast`) for 10 s, then started again;
the service is left running throughout. Every answer is recorded with when it was asked and
when it came, /readyz and an API route are polled every 100 ms, and a separate client polls the
database until it accepts connections again. Requirements:

- every postback asked and answered while the database was down is answered 503 (never OK,
  never 500, never a dropped connection), each within database.timeout (+1 s of slack);
- /readyz turns 503 during the outage (and never says 200 then), the API answers 503 too;
- the first postback asked after the database accepts connections again is acknowledged within
  2 s of that moment, and every one asked later than that is acknowledged, without a restart;
- the pool neither leaks nor hangs: the service's server connections (pg_stat_activity, by its
  application_name) never exceed workers x (pool_max_size + 1 for the feed listener), and no
  request is still waiting when the load stops;
- and, as after the crashes, nothing acknowledged is lost and verify is clean.

Exit 0 when all hold, 1 when one does not, 2 when the scenario could not run, 3 (skipped) with
--database-url, since a server that is not ours is not stopped.

    python ops/chaos/outage.py                     # 10 s outage, 2 workers
    python ops/chaos/outage.py --outage 3 --workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `ops.chaos` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.chaos import common
from ops.chaos.common import Probe, Report, Sent

NAME = "outage"


@dataclass
class Options:
    outage: float = 10.0
    warmup: float = 3.0
    after: float = 5.0
    workers: int = 2
    pool_max: int = 10
    timeout: float = 3.0
    rate: float = 200.0
    concurrency: int = 16
    users: int = 200
    seed: int = 1
    recovery_limit: float = 2.0
    interval: float = 0.1  # /readyz and API polling
    # A 500 from /readyz or the API at any moment fails the run; False only reports it.
    judge_read_500s: bool = True


async def scenario(
    dsn: str, pg: common.Postgres, opts: Options, log_dir: Path, say: common.Say
) -> Report:
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
    ready = common.Poller(f"{service.url}/readyz", interval=opts.interval)
    api = common.Poller(
        f"{service.url}/v1/events?limit=5",
        interval=opts.interval,
        headers={"Authorization": f"Bearer {common.READ_KEY}"},
    )
    bound = opts.workers * (opts.pool_max + 1)
    connections: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        say(f"service ready in {await service.start():.2f} s at {service.url}")
        async with common.load(generator):
            ready.start()
            api.start()
            await asyncio.sleep(opts.warmup)
            connections["under load, before the outage"] = await common.service_connections(dsn)
            stop_asked = time.monotonic()
            await asyncio.to_thread(pg.stop_server)
            down = time.monotonic()
            say(f"PostgreSQL stopped (pg_ctl stop -m fast took {down - stop_asked:.2f} s)")
            await asyncio.sleep(max(0.0, down + opts.outage - time.monotonic()))
            start_asked = time.monotonic()
            watcher = asyncio.create_task(common.wait_accepting(dsn, deadline=120))
            await asyncio.to_thread(pg.start_server)
            up = await watcher
            say(
                f"PostgreSQL started again after {start_asked - down:.2f} s down; accepting"
                f" connections {up - start_asked:.2f} s after pg_ctl start"
            )
            await asyncio.sleep(opts.after)
            connections["under load, after the outage"] = await common.service_connections(dsn)
            await ready.stop()
            await api.stop()
        say(f"load stopped: {len(generator.records)} requests")
        await asyncio.sleep(0.5)
        connections["idle, after the load"] = await common.service_connections(dsn)
        code = await asyncio.to_thread(service.stop)
        say(f"service stopped (SIGTERM): exit code {code}")
        connections["after the service stopped"] = await common.service_connections(dsn)
        audit = await common.audit(
            dsn, generator.records, service.config, len(generator.pending_at_end)
        )
    finally:
        await ready.stop()
        await api.stop()
        await asyncio.to_thread(service.stop)
        generator.dump(log_dir / "requests.jsonl", t0)
        common.dump_probes(ready.probes, log_dir / "readyz.jsonl", t0)
        common.dump_probes(api.probes, log_dir / "api.jsonl", t0)

    records = [s for s in generator.records if s.end]
    # "While down": from pg_ctl stop returning to pg_ctl start being run, when the server is
    # certainly not there. (Between that and the watcher's first connection it may already
    # answer a little before the watcher sees it, so answers then are not judged.)
    during = [s for s in records if s.start >= down and s.end <= start_asked]
    outcomes = Counter(s.outcome for s in during)
    during_ok = sum(1 for s in during if s.acknowledged)
    during_500 = sum(1 for s in during if s.http == 500)
    during_other = sum(1 for s in during if s.http not in (200, 500, 503))
    slowest = max((s.end - s.start for s in during), default=0.0)
    at_stop = Counter(s.outcome for s in records if s.start < down and s.end > stop_asked)
    first_ack = common.first(records, lambda s: s.start >= up and s.acknowledged)
    first_ok = common.first(records, lambda s: s.start >= up and s.body.strip() == "OK")
    recovered = first_ack.end - up if first_ack else None
    late = [s for s in records if s.start >= up + opts.recovery_limit and not s.acknowledged]
    last_refused = max(
        (s.start - up for s in records if s.start >= up and s.http == 503), default=None
    )
    errors = Counter(s.outcome for s in records if s.http is None)

    report.heading("what was done")
    report.add("server", pg.where)
    report.add(
        "service",
        f"serve --workers {opts.workers}, pool_max_size {opts.pool_max},"
        f" database.timeout {opts.timeout:g} s",
    )
    report.add("load", f"{opts.concurrency} clients, {opts.rate:g}/s cap, {opts.users} users")
    report.add("pg_ctl stop -m fast took", f"{down - stop_asked:.2f} s")
    report.add("database down (stopped -> accepting)", f"{up - down:.2f} s")
    report.add("  of which pg_ctl start -> accepting", f"{up - start_asked:.2f} s")
    report.heading("while down (asked and answered between pg_ctl stop and pg_ctl start)")
    report.add("postbacks answered", f"{len(during)}: {_counts(outcomes)}", len(during) > 0, "> 0")
    report.add("  answered 200 (OK or DUP)", during_ok, during_ok == 0, "0")
    report.add("  answered 500", during_500, during_500 == 0, "0")
    report.add(
        "  other answers or no answer",
        during_other + sum(1 for s in during if s.http is None),
        during_other == 0 and all(s.http is not None for s in during),
        "0",
    )
    limit = opts.timeout + 1
    report.add("  slowest answer", f"{slowest:.2f} s", slowest <= limit, f"<= {limit:g} s")
    report.add("answers to postbacks asked while stopping", _counts(at_stop))
    window = (stop_asked, down, start_asked, up)
    strict = opts.judge_read_500s
    _report_probes(report, "/readyz", ready.probes, window, readyz=True, strict=strict)
    _report_probes(report, "GET /v1/events", api.probes, window, readyz=False, strict=strict)
    report.heading("after the database's return")
    report.add(
        "first OK/DUP after the return",
        "never"
        if first_ack is None or recovered is None
        else f"{recovered:.2f} s (asked {first_ack.start - up:.2f} s in)",
        recovered is not None and recovered <= opts.recovery_limit,
        f"<= {opts.recovery_limit:g} s",
    )
    report.add("first new credit answered OK after it", _after(first_ok, up))
    report.add(
        "last 503 asked after the return",
        "none" if last_refused is None else f"{last_refused:.2f} s in",
    )
    report.add(
        f"not acknowledged, asked >= {opts.recovery_limit:g} s after it",
        len(late),
        not late,
        "0",
    )
    report.add("service restarted", "no (the same processes throughout)")
    report.heading("the pool")
    for label, n in connections.items():
        report.add(f"server connections {label}", n, n <= bound, f"<= {bound}")
    report.add("dropped connections / client errors", _counts(errors), not errors, "none")
    common.report_audit(report, audit)
    common.report_logs(report, service)
    report.data.update(
        audit=audit,
        during=len(during),
        recovered=recovered,
        readyz=ready.probes,
        connections=connections,
    )
    report.note(f"every request: {log_dir / 'requests.jsonl'}; service logs: {log_dir}")
    return report


def _report_probes(
    report: Report,
    label: str,
    probes: list[Probe],
    window: tuple[float, float, float, float],
    *,
    readyz: bool,
    strict: bool,
) -> None:
    stop_asked, down, start_asked, up = window
    answered = [p for p in probes if p.end]
    inside = [p for p in answered if p.start >= down and p.end <= start_asked]
    statuses = Counter(str(p.status) if p.status is not None else "no answer" for p in inside)
    turned = common.first(answered, lambda p: p.start >= stop_asked and p.status == 503)
    back = common.first(answered, lambda p: p.start >= up and p.status == 200)
    for p in inside:
        if p.status != 503:
            report.note(
                f"{label} answered {p.status or p.error} while down: asked {p.start - down:.3f} s"
                f" after the stop, answered {p.end - down:.3f} s after it"
                f" (pg_ctl start at {start_asked - down:.3f} s)"
            )
    bad = sum(1 for p in inside if p.status != 503)
    report.add(
        f"{label} polled while down",
        f"{len(inside)}: {_counts(statuses)}",
        bool(inside) and bad == 0,
        "all 503",
    )
    if readyz:
        report.add(
            f"{label} turned 503",
            "never" if turned is None else f"{turned.end - down:+.2f} s from pg_ctl stop returning",
            turned is not None,
            "yes",
        )
    report.add(f"{label} 200 again after the return", _after(back, up))
    errors = [p for p in answered if p.status == 500]
    if strict:
        report.add(f"{label} answered 500, at any time", len(errors), not errors, "0")
    else:
        report.add(f"{label} answered 500, at any time", len(errors))
    for p in errors[:3]:
        report.note(f"{label} answered 500 {p.end - down:+.3f} s from pg_ctl stop returning")


def _after(item: Sent | Probe | None, up: float) -> str:
    return "never" if item is None else f"{item.end - up:.2f} s"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common()) or "-"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="outage", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(p)
    d = Options()
    p.add_argument("--outage", type=float, default=d.outage, help="seconds down (default 10)")
    p.add_argument("--workers", type=int, default=d.workers, help="serve --workers (default 2)")
    p.add_argument("--rate", type=float, default=d.rate, help="requests/s cap (default 200)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="clients (default 16)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = common.parse(parser(), argv)
    opts = Options(
        outage=args.outage,
        workers=args.workers,
        rate=args.rate,
        concurrency=args.concurrency,
        users=args.users,
        seed=args.seed,
    )
    if args.database_url:
        print(
            f"{NAME}: SKIPPED: it stops the PostgreSQL server, and one given by --database-url"
            " is not ours to stop; run it without, on the embedded server",
            flush=True,
        )
        return common.SKIPPED
    return common.run_scenario(NAME, _main(args, opts))


async def _main(args: argparse.Namespace, opts: Options) -> int:
    say = common.Say(NAME)
    with common.exclusive(NAME):
        pg = common.Postgres("", common.POSTGRES_DATA / NAME)
        await asyncio.to_thread(pg.start)
        try:
            dsn = await pg.create_database(NAME)
            log_dir = common.run_dir(NAME)
            say(f"seed {opts.seed}; server {pg.where}; database {common.database_name(dsn)}")
            say(f"logs in {log_dir}")
            report = await scenario(dsn, pg, opts, log_dir, say)
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
