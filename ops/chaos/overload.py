"""Fault scenario: overload, and slow or stalled clients.

**(a) More postbacks than the database can commit.** The service (one process) talks to
PostgreSQL through a TCP proxy in this process that delays every chunk by `--db-latency`
seconds each way, so each commit is slow; `writer.max_queue` is small (`--max-queue`). Then
`--clients` walls (one keep-alive connection each) send new signed Medioot postbacks for
`--duration` seconds, each as soon as the last was answered; a wall answered 503 waits what
Retry-After says and sends the same postback again, as the walls do, until it is answered 200.
It must hold that: every answer is 200 or 503, every 503 carries Retry-After, load was shed
(some 503s: otherwise the burst was not beyond capacity and nothing was shown), each of them
counted as outcome `shed` in the access lines and none `unavailable` (overload is not an
outage: LedgerOverloaded, not LedgerDatabaseUnavailable); the p99 latency
of answers stays under `--p99-limit` (2.5 s, the LedgerPostbackLatencyHigh alert) however long
the burst lasts, and 503s come at once; the service's memory (RSS, sampled with psutil) grows by
less than `--rss-limit` MB; and in the end every postback was acknowledged once the walls
retried, each exactly once in the ledger, and `python -m service verify` exits 0.

**(b) Slow and stalled clients.** A service with `server.keepalive_timeout` and
`server.read_timeout` of `--slow-timeout` seconds gets `--slow` connections (default 500) that
never finish: headers sent a byte at a time, a postback body sent a byte at a time, nothing at
all, or nothing after one answered request. Meanwhile 8 walls send postbacks. It must hold
that: every normal postback is answered 200, with a p99 latency under 1 s (the same traffic's
without the slow connections is shown beside it); every slow connection is closed by the server:
an unfinished head or an idle connection within the keep-alive timeout, a trickling body
answered 408 within the read timeout and closed once aiohttp's lingering time (10 s) is over;
and the service holds no more connections afterwards than before.

Exit 0 when all of it holds, 1 otherwise, 2 when the scenario could not run.

    python ops/chaos/overload.py
    python ops/chaos/overload.py --duration 10 --clients 300 --slow 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `ops.chaos` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import asyncpg
import psutil

from ops.chaos import common
from ops.chaos.common import ChaosError, Report
from ops.chaos.dbproxy import DatabaseProxy
from ops.chaos.fuzzlib import Conn, Target, md5

NAME = "overload"
TARGET = Target(
    medioot_secret="overload-medioot-secret",
    inbrain_secret="overload-inbrain-secret",
    adgate_token="overload-adgate-token-0001",
)
LINGERING = 10.0  # aiohttp's lingering_time: how long it reads an unread body after answering


# --- figures -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; nan when there is nothing."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(share * len(ordered) + 0.999999) - 1))]


def ms(values: Sequence[float]) -> str:
    if not values:
        return "-"
    p = [percentile(values, q) * 1000 for q in (0.5, 0.9, 0.99)]
    return (
        f"p50 {p[0]:.0f} ms, p90 {p[1]:.0f} ms, p99 {p[2]:.0f} ms, max {max(values) * 1000:.0f} ms"
    )


class Memory:
    """The service's RSS, sampled every `interval` seconds while it runs."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def now(self) -> int:
        rss: int = self.process.memory_info().rss
        return rss

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.samples.append((time.monotonic(), self.now()))
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def peak(self, since: float = 0.0, until: float = float("inf")) -> int:
        return max((rss for t, rss in self.samples if since <= t <= until), default=0)


def mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def postback_wire(host: bytes, user: str, transid: str, reward: str) -> bytes:
    signature = md5(user + transid + reward + TARGET.medioot_secret)
    query = f"subid={user}&transid={transid}&reward={reward}&status=1&signature={signature}"
    return (
        f"GET /postbacks/{TARGET.medioot}?{query} HTTP/1.1\r\nHost: ".encode() + host + b"\r\n\r\n"
    )


# --- (a) the burst -------------------------------------------------------------------------------


@dataclass
class Burst:
    answers: Counter[str] = field(default_factory=Counter)
    latency_ok: list[float] = field(default_factory=list)
    latency_503: list[float] = field(default_factory=list)
    latency_by_second: dict[int, list[float]] = field(default_factory=dict)
    no_retry_after: int = 0
    errors: list[str] = field(default_factory=list)
    postbacks: dict[str, tuple[str, str]] = field(default_factory=dict)  # transid -> user, reward
    acknowledged: set[str] = field(default_factory=set)
    retries: int = 0
    gave_up: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def burst(
    host: str, port: int, *, clients: int, duration: float, drain: float, run: str
) -> Burst:
    """`clients` walls, each sending new postbacks for `duration` seconds and retrying a 503
    after Retry-After; after that, each finishes the postback it has (for up to `drain`)."""
    b = Burst()
    host_header = f"{host}:{port}".encode()
    # Every wall connected first: more connects at once than the listen backlog (128) would
    # measure the kernel's SYN retries, not the service.
    conns = [Conn(host, port) for _ in range(clients)]
    for i in range(0, clients, 100):
        await asyncio.gather(*(c.connect() for c in conns[i : i + 100]))
    started = time.monotonic()
    end = started + duration
    give_up = end + drain

    async def wall(number: int) -> None:
        conn = conns[number]
        seq = 0
        try:
            while time.monotonic() < end:
                seq += 1
                user = f"ov{run}-u{number % 200}"
                transid = f"ov{run}-{number}-{seq}"
                reward = f"{(number * 7 + seq) % 1000 + 1}.{seq % 100:02d}"
                b.postbacks[transid] = (user, reward)
                wire = postback_wire(host_header, user, transid, reward)
                while True:
                    sent = time.monotonic()
                    reply = await conn.exchange(wire, limit=60)
                    took = time.monotonic() - sent
                    label = str(reply.status) if reply.status else reply.error.split(":")[0]
                    b.answers[label] += 1
                    b.latency_by_second.setdefault(int(sent - started), []).append(took)
                    if reply.status == 200:
                        b.latency_ok.append(took)
                        b.acknowledged.add(transid)
                        break
                    if reply.status == 503:
                        b.latency_503.append(took)
                        wait = reply.headers.get("retry-after")
                        if wait is None:
                            b.no_retry_after += 1
                        if time.monotonic() > give_up:
                            b.gave_up.append(transid)
                            break
                        b.retries += 1
                        await asyncio.sleep(float(wait or 1))
                        continue
                    b.errors.append(f"{label} {reply.body[:120]!r}")
                    if time.monotonic() > give_up:
                        b.gave_up.append(transid)
                        break
                    await asyncio.sleep(1)
        finally:
            conn.close()

    await asyncio.gather(*(wall(i) for i in range(clients)))
    b.seconds = time.monotonic() - started
    return b


async def audit_burst(dsn: str, b: Burst) -> tuple[int, list[str]]:
    """Every acknowledged postback has exactly its one event; nothing else is there."""
    problems: list[str] = []
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        rows = await conn.fetch(
            "SELECT key, user_id, amount FROM events WHERE provider = $1", TARGET.medioot
        )
        wallets = await conn.fetch("SELECT user_id, balance FROM wallets")
    finally:
        await conn.close()
    stored = {r["key"].removeprefix("credit:"): r for r in rows}
    for transid in b.acknowledged:
        row = stored.get(transid)
        user, reward = b.postbacks[transid]
        if row is None:
            problems.append(f"{transid}: acknowledged, no event")
        elif (row["user_id"], row["amount"]) != (user, Decimal(reward)):
            problems.append(
                f"{transid}: event {row['user_id']} {row['amount']}, sent {user} {reward}"
            )
    for transid in stored.keys() - b.postbacks.keys():
        problems.append(f"{transid}: an event nobody sent")
    expected: dict[str, Decimal] = {}
    for row in stored.values():
        expected[row["user_id"]] = expected.get(row["user_id"], Decimal(0)) + row["amount"]
    for w in wallets:
        if w["balance"] != expected.get(w["user_id"]):
            problems.append(
                f"wallet {w['user_id']} = {w['balance']}, events say {expected.get(w['user_id'])}"
            )
    return len(rows), problems


def postback_outcomes(service: common.Service) -> Counter[str]:
    """The outcomes of the service's postbacks, from its access lines over every start."""
    outcomes: Counter[str] = Counter()
    for log in sorted(service.log_dir.glob("service-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and str(entry.get("route", "")).startswith("/postbacks"):
                outcomes[str(entry.get("outcome"))] += 1
    return outcomes


async def scenario_burst(
    args: argparse.Namespace, pg: common.Postgres, report: Report, say: common.Say
) -> None:
    dsn = await pg.create_database(f"{NAME}_a")
    proxy = DatabaseProxy(dsn, delay=args.db_latency)
    slow_dsn = await proxy.start()
    folder = common.run_dir(f"{NAME}-a")
    service = common.Service(dsn, folder, pool_max=args.pool, timeout=5.0)
    sections = {
        # The service's queries through the slow proxy; migrations straight to the database.
        "database": {
            **common.database_urls(slow_dsn, dsn),
            "pool_max_size": args.pool,
            "timeout": 5.0,
        },
        "writer": {"max_queue": args.max_queue, "batch_max": args.batch_max},
        "integrity": {"chain_key": common.CHAIN_KEY},
    }
    service.config.write_text(TARGET.toml(slow_dsn, api_key=common.READ_KEY, **sections))
    ok = False
    try:
        await service.start()
        assert service.pid is not None
        memory = Memory(service.pid)
        await asyncio.sleep(1.0)
        baseline = memory.now()
        memory.start()
        say(
            f"(a) {args.clients} walls for {args.duration:g} s; database round trips +"
            f"{2 * args.db_latency * 1000:g} ms; writer.max_queue {args.max_queue},"
            f" pool {args.pool}"
        )
        t0 = time.monotonic()
        b = await burst(
            common.HOST,
            service.port,
            clients=args.clients,
            duration=args.duration,
            drain=60.0,
            run=f"{args.seed % 100000:x}",
        )
        await memory.stop()
        end_rss = memory.now()
        say(f"(a) burst over in {b.seconds:.0f} s: {dict(b.answers)}")
        events, problems = await audit_burst(dsn, b)
        stopped = await asyncio.to_thread(service.stop)  # the proxy runs on this loop
        verify_code, verify_line = await asyncio.to_thread(common.run_verify, service.config)
        outcomes = postback_outcomes(service)
        ok = True
    finally:
        if not ok:
            await asyncio.to_thread(service.stop)
        await proxy.close()

    everything = b.latency_ok + b.latency_503
    peak = memory.peak()
    half = t0 + args.duration / 2
    first_half, second_half = memory.peak(t0, half), memory.peak(half, t0 + args.duration)
    seconds = sorted(b.latency_by_second)
    p99_by_second = [percentile(b.latency_by_second[s], 0.99) for s in seconds]
    other = sum(n for k, n in b.answers.items() if k not in ("200", "503"))
    report.heading("(a) a burst beyond what the database commits")
    report.add("walls (concurrent clients)", args.clients)
    report.add("requests answered", sum(b.answers.values()))
    report.add("  by answer", ", ".join(f"{k} {n}" for k, n in b.answers.most_common()))
    report.add("  postbacks (distinct)", len(b.postbacks))
    report.add("  retries after a 503", b.retries)
    report.add("  200 per second (commit capacity)", f"{b.answers['200'] / b.seconds:.0f}")
    report.add("answers other than 200 or 503", other, other == 0, "0")
    report.add("503 without Retry-After", b.no_retry_after, b.no_retry_after == 0, "0")
    report.add("load shed (503 answers)", b.answers["503"], b.answers["503"] > 0, "> 0")
    # Shed, not down: every 503 of the burst is outcome "shed" (LedgerOverloaded's), none
    # "unavailable" (LedgerDatabaseUnavailable's): the database answered throughout.
    shed, unavailable = outcomes["shed"], outcomes["unavailable"]
    report.add("  logged as outcome shed", shed, shed == b.answers["503"], "= 503 answers")
    report.add("  logged as outcome unavailable", unavailable, unavailable == 0, "0")
    report.add("latency, all answers", ms(everything))
    report.add("latency, 200", ms(b.latency_ok))
    report.add("latency, 503", ms(b.latency_503))
    p99 = percentile(everything, 0.99)
    report.add("p99 latency", f"{p99:.3f} s", p99 < args.p99_limit, f"< {args.p99_limit:g} s")
    p99_503 = percentile(b.latency_503, 0.99) if b.latency_503 else 0.0
    report.add("p99 latency of a 503", f"{p99_503:.3f} s", p99_503 < 1.0, "< 1 s")
    report.add(
        "p99 latency second by second",
        " ".join(f"{v * 1000:.0f}" for v in p99_by_second[: int(args.duration) + 2]) + " ms",
    )
    last = p99_by_second[: int(args.duration)]
    growing = len(last) >= 4 and min(last[-2:]) > 2 * max(last[1:3]) + 0.2
    report.add("p99 latency grows through the burst", growing, not growing, "False")
    report.add("service RSS before / peak / after", f"{mb(baseline)} / {mb(peak)} / {mb(end_rss)}")
    report.add(
        "  peak in first / second half of the burst", f"{mb(first_half)} / {mb(second_half)}"
    )
    grown = peak - baseline
    report.add("RSS growth", mb(grown), grown < args.rss_limit * 2**20, f"< {args.rss_limit} MB")
    report.add("postbacks never acknowledged", len(b.gave_up), not b.gave_up, "0")
    report.add("events", events)
    report.add("ledger problems", len(problems), not problems, "0")
    report.add("verify", verify_line or "(no output)", verify_code == 0, "exit 0")
    report.add("service exit code on SIGTERM after the burst", stopped, stopped == 0, "0")
    for line in problems[:5] + b.errors[:5]:
        report.note(line)
    if report.ok:
        with contextlib.suppress(Exception):
            await pg.drop_database(dsn)


# --- (b) slow clients ----------------------------------------------------------------------------


@dataclass
class Slow:
    kind: str
    opened: float = 0.0
    closed: float | None = None  # when the server closed it
    answer: str = ""  # the status line the server sent, if any
    answered: float | None = None
    error: str = ""


async def slow_client(host: str, port: int, slow: Slow, interval: float, limit: float) -> None:
    """One connection that never finishes; records when (if ever) the server closes it."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        slow.error = f"connect: {exc}"
        return
    slow.opened = time.monotonic()
    head_sent = b""
    if slow.kind == "slow-head":
        head_sent = b"GET /postbacks/medioot?subid=a HTTP/1.1\r\nHost: x\r\nX-Slow: "
    elif slow.kind == "slow-body":
        head_sent = (
            b"POST /postbacks/medioot HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n"
        )
    elif slow.kind == "idle-after-request":
        head_sent = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    async def watch() -> None:
        """Read whatever the server says until it closes the connection.

        A reset is a close too: a server that closes a socket with unread bytes in it (a
        trickled byte that arrived after its last read) makes the kernel send RST, not FIN.
        """
        buffer = b""
        while True:
            try:
                chunk = await reader.read(4096)
            except ConnectionError as exc:
                slow.error = type(exc).__name__
                break
            if not chunk:
                break
            buffer += chunk
            if not slow.answer and b"\r\n" in buffer:
                line = buffer.split(b"\r\n", 1)[0].decode("latin-1")
                if slow.kind == "idle-after-request" and not slow.answered:
                    slow.answered = time.monotonic()
                    buffer = b""
                    continue
                slow.answer, slow.answered = line, time.monotonic()
        slow.closed = time.monotonic()

    watcher = asyncio.create_task(watch())
    try:
        writer.write(head_sent)
        await writer.drain()
        deadline = slow.opened + limit
        while not watcher.done() and time.monotonic() < deadline:
            if slow.kind in ("slow-head", "slow-body"):
                with contextlib.suppress(OSError):
                    writer.write(b"a")
                    await writer.drain()
            await asyncio.wait([watcher], timeout=interval)
        if not watcher.done():
            watcher.cancel()
    except (OSError, ConnectionError) as exc:
        if slow.closed is None:
            slow.closed = time.monotonic()
        slow.error = type(exc).__name__
    finally:
        with contextlib.suppress(BaseException):
            await watcher
        writer.close()


async def walls(
    host: str, port: int, seconds: float, run: str, n: int = 8
) -> tuple[list[float], Counter[str]]:
    """`n` walls sending postbacks one after the other for `seconds`: latencies and answers."""
    latencies: list[float] = []
    answers: Counter[str] = Counter()
    end = time.monotonic() + seconds
    host_header = f"{host}:{port}".encode()

    async def wall(number: int) -> None:
        conn = Conn(host, port)
        seq = 0
        try:
            while time.monotonic() < end:
                seq += 1
                transid = f"sl{run}-{number}-{seq}"
                wire = postback_wire(host_header, f"sl{run}-u{number}", transid, "1.00")
                sent = time.monotonic()
                reply = await conn.exchange(wire, limit=30)
                latencies.append(time.monotonic() - sent)
                answers[str(reply.status) if reply.status else reply.error.split(":")[0]] += 1
                await asyncio.sleep(0.02)
        finally:
            conn.close()

    await asyncio.gather(*(wall(i) for i in range(n)))
    return latencies, answers


def established(pid: int, port: int) -> int:
    """Connections the service holds on its port now."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return -1
    return sum(
        1 for c in connections if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED"
    )


async def scenario_slow(
    args: argparse.Namespace, pg: common.Postgres, report: Report, say: common.Say
) -> None:
    dsn = await pg.create_database(f"{NAME}_b")
    folder = common.run_dir(f"{NAME}-b")
    timeout = args.slow_timeout
    service = common.Service(dsn, folder, pool_max=10, timeout=5.0)
    sections = {
        "server": {"keepalive_timeout": timeout, "read_timeout": timeout},
        "database": common.database_urls(dsn),
        "integrity": {"chain_key": common.CHAIN_KEY},
    }
    service.config.write_text(TARGET.toml(dsn, api_key=common.READ_KEY, **sections))
    run = f"{args.seed % 100000:x}"
    try:
        await service.start()
        assert service.pid is not None
        before = established(service.pid, service.port)
        base_latency, base_answers = await walls(common.HOST, service.port, 5.0, run + "a")
        kinds = ["slow-head"] * 4 + ["slow-body"] * 3 + ["idle"] * 2 + ["idle-after-request"]
        slows = [Slow(kinds[i % len(kinds)]) for i in range(args.slow)]
        limit = timeout + LINGERING + 15
        say(f"(b) {args.slow} slow connections; keepalive_timeout = read_timeout = {timeout:g} s")
        attack = asyncio.gather(
            *(slow_client(common.HOST, service.port, s, 0.5, limit) for s in slows)
        )
        await asyncio.sleep(1.0)  # every slow connection is open
        during = established(service.pid, service.port)
        latency, answers = await walls(common.HOST, service.port, max(5.0, timeout + 2), run + "b")
        await attack
        await asyncio.sleep(0.5)
        after = established(service.pid, service.port)
    finally:
        await asyncio.to_thread(service.stop)

    report.heading("(b) slow and stalled clients")
    report.add("slow connections opened", sum(1 for s in slows if s.opened))
    report.add(
        "  by kind", ", ".join(f"{k} {n}" for k, n in Counter(s.kind for s in slows).items())
    )
    report.add(
        "connections to the service: before / during / after", f"{before} / {during} / {after}"
    )
    report.add(
        "normal postbacks without slow clients", f"{sum(base_answers.values())}: {ms(base_latency)}"
    )
    report.add("normal postbacks during the attack", f"{sum(answers.values())}: {ms(latency)}")
    refused = sum(n for k, n in answers.items() if k != "200")
    report.add("normal postbacks not answered 200", refused, refused == 0, "0")
    p99, base_p99 = percentile(latency, 0.99), percentile(base_latency, 0.99)
    bound = 1.0
    report.add(
        "p99 latency during the attack",
        f"{p99:.3f} s (without: {base_p99:.3f} s)",
        p99 < bound,
        f"< {bound:g} s",
    )
    for kind, allowed, what in (
        ("slow-head", timeout + 1.5, "an unfinished head: closed within keepalive_timeout"),
        ("idle", timeout + 1.5, "nothing sent: closed within keepalive_timeout"),
        (
            "idle-after-request",
            timeout + 1.5,
            "idle after an answer: closed within keepalive_timeout",
        ),
        (
            "slow-body",
            timeout + LINGERING + 2.0,
            "a trickling body: closed after read_timeout and lingering",
        ),
    ):
        group = [s for s in slows if s.kind == kind and s.opened]
        times = [s.closed - s.opened for s in group if s.closed is not None]
        late = sum(1 for t in times if t > allowed)
        never = sum(1 for s in group if s.closed is None)
        report.add(
            f"{kind}: closed by the server",
            f"{len(times)} of {len(group)}; {common.seconds(times)}",
        )
        report.add(
            f"  {what} (< {allowed:g} s)",
            f"{late} late, {never} never",
            late == 0 and never == 0,
            "0 late, 0 never",
        )
    bodies = [s for s in slows if s.kind == "slow-body" and s.opened]
    answered = [s for s in bodies if s.answer.startswith("HTTP/1.1 408")]
    in_time = [
        s for s in answered if s.answered is not None and s.answered - s.opened < timeout + 1.5
    ]
    report.add(
        "slow-body: answered 408 within read_timeout",
        f"{len(in_time)} of {len(bodies)}",
        len(in_time) == len(bodies),
        "all",
    )
    left = after - before
    report.add("connections left open afterwards", left, left <= 0, "0")
    with contextlib.suppress(Exception):
        if report.ok:
            await pg.drop_database(dsn)


# --- the scenario --------------------------------------------------------------------------------


async def scenario(args: argparse.Namespace) -> int:
    say = common.Say(NAME)
    report = Report(NAME)
    started = time.monotonic()
    pg = common.Postgres(args.database_url, common.POSTGRES_DATA / NAME)
    await asyncio.to_thread(pg.start)
    try:
        t = time.monotonic()
        await scenario_burst(args, pg, report, say)
        seconds_a = time.monotonic() - t
        t = time.monotonic()
        await scenario_slow(args, pg, report, say)
        seconds_b = time.monotonic() - t
    finally:
        await asyncio.to_thread(pg.close)
    report.heading("totals")
    report.add(
        "duration",
        f"{time.monotonic() - started:.0f} s ((a) {seconds_a:.0f} s, (b) {seconds_b:.0f} s)",
    )
    print(report.render(), flush=True)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="overload.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_common_args(parser)
    parser.add_argument("--clients", type=int, default=600, help="walls in the burst (default 600)")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of burst (default 30)"
    )
    parser.add_argument(
        "--db-latency",
        type=float,
        default=0.002,
        help="seconds added to each database chunk each way (default 0.002)",
    )
    parser.add_argument("--max-queue", type=int, default=100, help="writer.max_queue (default 100)")
    parser.add_argument("--batch-max", type=int, default=20, help="writer.batch_max (default 20)")
    parser.add_argument("--pool", type=int, default=4, help="database.pool_max_size (default 4)")
    parser.add_argument("--p99-limit", type=float, default=2.5, help="seconds (default 2.5)")
    parser.add_argument(
        "--rss-limit", type=int, default=200, help="MB of RSS growth allowed (default 200)"
    )
    parser.add_argument("--slow", type=int, default=500, help="slow connections (default 500)")
    parser.add_argument(
        "--slow-timeout",
        type=float,
        default=2.0,
        help="keepalive and read timeouts for (b) (default 2)",
    )
    args = common.parse(parser, argv)
    common.stop_on_sigterm()
    try:
        with common.exclusive(NAME):
            return asyncio.run(scenario(args))
    except ChaosError as exc:
        print(f"{NAME}: could not run: {exc}", flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
