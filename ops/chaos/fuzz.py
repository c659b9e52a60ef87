"""Fault scenario: fuzzing every postback endpoint, then the /v1/ API.

Starts the service (`python -m service serve`, one process) on a fresh database with three walls
(`fuzzlib.Target`: Medioot, inBrain, and AdGate behind a trusted proxy address) and sends
`--requests` requests (default 100,000) from `--concurrency` keep-alive clients: random methods,
paths, query parameters (real names and junk, case variants, duplicates, NUL, %-escapes, invalid
UTF-8, huge values), bodies (JSON objects, arrays, deep nesting, huge numbers, NaN, forms,
binary, gzip bombs, chunked), headers (X-Forwarded-For spoofing from an untrusted peer, huge and
many headers, hostile request ids) and malformed HTTP, with a share of deliberately valid
postbacks (signed Medioot and inBrain, AdGate with the right token from an allowed address)
whose expected events are remembered, and what one captured postback can be made into: boundary
shifts (characters moved across the signed fields, the signature kept), replays with the
unsigned fields changed (Medioot status and uuid, inBrain Reward, RewardType and IsTest: forged
reversals, some before the real chargeback) and inBrain bodies nested 100 to 100,000 levels
deep. The generator is `fuzzlib.Grammar` driven by a seeded `random.Random` (not hypothesis:
the suite's bounded test drives the same grammar with hypothesis); item i of a run comes from
`Random(f"{seed}/{i}")`, so `--show I` prints it again.

Then schemathesis runs against /v1/ with the read key, `--st-examples` cases per operation
(the same checks as tests/integration/test_openapi.py, without positive_data_acceptance: a
cursor is opaque, so a well-formed string the API never handed out is rightly a 400).

It must hold that: no answer is a 5xx (the database stays up throughout, so a 503 is no excuse);
every valid postback gets the answer the money rules give it (OK, or DUP for a repeat or a
conflict); a boundary shift gets 403, deep JSON 400 or 403 (413 past max_body_bytes); the events
table holds exactly the events of the valid postbacks (none from a request without a valid
signature, token and allowed address, nor from a replayed signature), no wall transaction has a
second credit or reversal, and every wallet equals what the events make under the money rules
(a reversal takes back at most its credit, from the same user, once); the postback log shows an
accepted outcome only for valid requests; no service log line holds a secret, token or sent
signature; the service is still up; `python -m service verify` exits 0. Exit 0 when all hold,
1 otherwise, 2 when the scenario could not run.

    python ops/chaos/fuzz.py                       # 100,000 requests, then schemathesis
    python ops/chaos/fuzz.py --requests 5000 --seed 7
    python ops/chaos/fuzz.py --seed 7 --show 1234  # print request item 1234 of seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `ops.chaos` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import asyncpg

from ops.chaos import common
from ops.chaos.common import ChaosError, Report
from ops.chaos.fuzzlib import (
    Grammar,
    Ledger,
    Pair,
    RandomSource,
    Target,
    log_summary,
    md5,
    secret_lines,
    send_item,
)

NAME = "fuzz"


def target_for(seed: int) -> Target:
    """Credentials derived from the seed, so that a run can be replayed exactly."""
    return Target(
        medioot_secret=f"fz-medioot-{md5(f'{seed}/medioot')[:16]}",
        inbrain_secret=f"fz-inbrain-{md5(f'{seed}/inbrain')[:16]}",
        adgate_token=f"fzTok_{md5(f'{seed}/adgate')}",
    )


def item_source(seed: int, index: int) -> RandomSource:
    return RandomSource(random.Random(f"{seed}/{index}"))


# --- the postback fuzz ---------------------------------------------------------------------------


async def fuzz_postbacks(
    host: str,
    port: int,
    grammar: Grammar,
    ledger: Ledger,
    *,
    requests: int,
    seed: int,
    concurrency: int,
    say: common.Say,
) -> None:
    claimed = 0
    next_item = 0

    async def client() -> None:
        nonlocal claimed, next_item
        pair = Pair(host, port)
        try:
            while claimed < requests:
                index = next_item
                next_item += 1
                reqs = grammar.item(item_source(seed, index))
                claimed += len(reqs)
                await send_item(pair, grammar, ledger, reqs, where=f"item {index}")
        finally:
            pair.close()

    async def progress() -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(10)
            rate = ledger.requests / (time.monotonic() - started)
            say(
                f"{ledger.requests} requests ({rate:.0f}/s); "
                + ", ".join(f"{k} {n}" for k, n in ledger.statuses.most_common(8))
            )

    reporter = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter


# --- schemathesis on /v1/ ------------------------------------------------------------------------


def run_schemathesis(base_url: str, key: str, examples: int, seed: int) -> tuple[int, list[str]]:
    """Every /v1/ operation with `examples` generated cases; the requests made and failures."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from schemathesis.checks import positive_data_acceptance
    from schemathesis.core.result import Err

    auth = {"Authorization": f"Bearer {key}"}
    session = requests.Session()
    sent = [0]

    def count(response: Any, *args: Any, **kwargs: Any) -> None:
        sent[0] += 1

    session.hooks["response"].append(count)
    schema = schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json", headers=auth)
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation the schema describes wrongly: a finding
            failures.append(f"schema: {' '.join(str(result.err()).split())[:600]}")
            continue
        operation = result.ok()

        @hypothesis_seed(seed)
        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                base_url=base_url,
                session=session,
                headers=auth,
                excluded_checks=[positive_data_acceptance],
            )

        try:
            check()
        except Exception as exc:  # a failed check: schemathesis says which and how
            text = " ".join(str(exc).split())
            failures.append(f"{operation.label}: {text[:600]}")
    return sent[0], failures


# --- the scenario --------------------------------------------------------------------------------


def status_classes(statuses: Counter[str]) -> Counter[str]:
    classes: Counter[str] = Counter()
    for status, n in statuses.items():
        classes[f"{status[0]}xx" if status.isdigit() else "no answer"] += n
    return classes


def counts(counter: Counter[str], limit: int = 20) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common(limit)) or "-"


def examples(report: Report, label: str, items: Sequence[str], limit: int = 5) -> None:
    for item in items[:limit]:
        report.note(f"{label}: {item}")


async def scenario(args: argparse.Namespace) -> int:
    say = common.Say(NAME)
    report = Report(NAME)
    started = time.monotonic()
    target = target_for(args.seed)
    pg = common.Postgres(args.database_url, common.POSTGRES_DATA / NAME)
    service: common.Service | None = None
    dsn = ""
    await asyncio.to_thread(pg.start)
    try:
        dsn = await pg.create_database(NAME)
        folder = common.run_dir(NAME)
        say(
            f"seed {args.seed}; database {common.database_name(dsn)} ({pg.where}); logs in {folder}"
        )
        service = common.Service(dsn, folder, pool_max=10, timeout=5.0)
        service.config.write_text(
            target.toml(
                dsn,
                api_key=common.READ_KEY,
                database=common.database_urls(dsn),
                integrity={"chain_key": common.CHAIN_KEY},
            )
        )
        await service.start()
        say(
            f"service up at {service.url}; {args.requests} requests from {args.concurrency} clients"
        )

        grammar = Grammar(target, f"{args.seed % 100000:x}")
        ledger = Ledger()
        t0 = time.monotonic()
        await fuzz_postbacks(
            common.HOST,
            service.port,
            grammar,
            ledger,
            requests=args.requests,
            seed=args.seed,
            concurrency=args.concurrency,
            say=say,
        )
        fuzz_seconds = time.monotonic() - t0
        say(f"postback fuzz done: {ledger.requests} requests in {fuzz_seconds:.0f} s")

        t1 = time.monotonic()
        st_requests = 0
        st_failures: list[str] = []
        if args.st_examples > 0:
            st_requests, st_failures = await asyncio.to_thread(
                run_schemathesis, service.url, common.READ_KEY, args.st_examples, args.seed
            )
        st_seconds = time.monotonic() - t1
        say(f"schemathesis done: {st_requests} requests in {st_seconds:.0f} s")

        alive = service.proc is not None and service.proc.poll() is None
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            check = await ledger.check(conn)
        finally:
            await conn.close()
        await asyncio.to_thread(service.stop)
        verify_code, verify_line = await asyncio.to_thread(common.run_verify, service.config)
        secrets = {**target.secrets(), "api key": common.READ_KEY}
        leaks: list[str] = []
        for log in sorted(folder.glob("service-*.log")):
            with log.open("rb") as lines:
                leaks += secret_lines(lines, secrets, ledger.signatures)
        levels, errors, other = log_summary(sorted(folder.glob("service-*.log")))

        classes = status_classes(ledger.statuses)
        five = ledger.server_errors
        report.heading("postback fuzz")
        report.add("requests sent", ledger.requests)
        report.add("  by status class", counts(classes))
        report.add("  by status", counts(ledger.statuses))
        report.add("  by family", counts(ledger.families))
        report.add("  requests per second", f"{ledger.requests / fuzz_seconds:.0f}")
        report.add("5xx answers", len(five), not five, "0")
        report.add(
            "503 without Retry-After", len(ledger.no_retry_after), not ledger.no_retry_after, "0"
        )
        report.add("timeouts (no answer in 30 s)", len(ledger.timeouts), not ledger.timeouts, "0")
        report.add("closed without an answer", counts(ledger.no_answer, 6))
        report.add("valid postbacks sent", ledger.valid_sent)
        report.add(
            "valid postbacks not answered 200",
            len(ledger.valid_refused),
            not ledger.valid_refused,
            "0",
        )
        report.add("fuzz answered 200 (no event may follow)", counts(ledger.fuzz_ok) or "0")
        report.add(
            "answers other than the known one (boundary shifts 403, deep JSON 400/403/413)",
            len(ledger.wrong_status),
            not ledger.wrong_status,
            "0",
        )
        report.heading("the ledger afterwards")
        report.add("events in the log", check.events)
        report.add("expected events (valid, distinct)", len(ledger.expects))
        report.add(
            "events no valid postback sent (balance changes from fuzz)",
            len(check.unexpected),
            not check.unexpected,
            "0",
        )
        report.add("events recorded differently", len(check.wrong), not check.wrong, "0")
        report.add(
            "valid postbacks answered 200 without an event",
            len(check.missing),
            not check.missing,
            "0",
        )
        report.add(
            "transactions with a second credit or reversal recorded",
            len(check.doubled),
            not check.doubled,
            "0",
        )
        report.add(
            "wallets off (balance, credited, reversed: a reversal takes back at most its credit)",
            len(check.wallets_off),
            not check.wallets_off,
            "0",
        )
        report.add(
            "fuzz requests with an accepted outcome in the postback log",
            len(check.fuzz_accepted),
            not check.fuzz_accepted,
            "0",
        )
        report.add("postback log outcomes", counts(check.outcomes))
        report.add("verify", verify_line or "(no output)", verify_code == 0, "exit 0")
        report.add("service still running after the fuzz", alive, alive, "True")
        report.heading("logs")
        report.add("log lines holding a secret, token or signature", len(leaks), not leaks, "0")
        report.add("service log lines by level", counts(levels))
        report.add("service log lines at level error", len(errors))
        report.add("other output (not JSON), by first line", counts(other, 5))
        report.heading("schemathesis on /v1/")
        report.add("operations failing a check", len(st_failures), not st_failures, "0")
        report.add("requests", st_requests)
        report.heading("totals")
        report.add("requests (fuzz + schemathesis)", ledger.requests + st_requests)
        report.add(
            "duration",
            f"{time.monotonic() - started:.0f} s"
            f" (fuzz {fuzz_seconds:.0f} s, schemathesis {st_seconds:.0f} s)",
        )
        examples(report, "5xx", five)
        examples(report, "valid refused", ledger.valid_refused)
        examples(report, "wrong status", ledger.wrong_status)
        examples(report, "timeout", ledger.timeouts)
        examples(report, "unexpected", check.unexpected)
        examples(report, "wrong", check.wrong)
        examples(report, "missing", check.missing)
        examples(report, "doubled", check.doubled)
        examples(report, "wallet", check.wallets_off)
        examples(report, "accepted fuzz", check.fuzz_accepted)
        examples(report, "leak", leaks)
        examples(report, "schemathesis", st_failures)
        for line, n in Counter(errors).most_common(6):
            report.note(f"error log: {n} x {line}")
        if not report.ok:
            report.note(f"database kept for inspection: {dsn}")
        print(report.render(), flush=True)
        return 0 if report.ok else 1
    finally:
        if service is not None:
            await asyncio.to_thread(service.stop)
        if dsn and report.ok and not args.keep:
            with contextlib.suppress(Exception):
                await pg.drop_database(dsn)
        await asyncio.to_thread(pg.close)


def show(args: argparse.Namespace) -> int:
    grammar = Grammar(target_for(args.seed), f"{args.seed % 100000:x}")
    for req in grammar.item(item_source(args.seed, args.show)):
        where = "from the trusted proxy" if req.via_proxy else "from 127.0.0.1"
        print(f"# {req.family}, {where}, valid={req.valid}")
        print(repr(req.wire(b"127.0.0.1:PORT")))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fuzz.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(parser)
    parser.add_argument(
        "--requests", type=int, default=100_000, help="postback requests to send (default 100000)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="clients (default 32)")
    parser.add_argument(
        "--st-examples",
        type=int,
        default=300,
        help="schemathesis cases per /v1/ operation (default 300; 0 skips)",
    )
    parser.add_argument(
        "--show", type=int, metavar="I", help="print request item I of --seed and exit"
    )
    args = common.parse(parser, argv)
    if args.show is not None:
        return show(args)
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
