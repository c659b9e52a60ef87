"""Spending from two service processes at once (two `serve`, each its own port and pool, one
database): many clients on one wallet split across both never overdraw it, one Idempotency-Key
sent to both at once has one effect and one answer, a hold ends once whichever process is
asked; postbacks, chargebacks, debits and holds for the same users sent to both at once keep
every invariant; and `verify` (the command) agrees at the end. The two processes serve every
test of the module."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.domain import settlement, wallet
from service.domain.amounts import EXACT, ZERO
from service.domain.events import Event, EventType
from tests import helpers
from tests.helpers import MEDIOOT_SECRET, READ_KEY, SPEND_KEY, medioot, unique

ROOT = Path(__file__).resolve().parents[2]
SPEND = {"Authorization": f"Bearer {SPEND_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ready(url: str, process: subprocess.Popen[bytes], deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"the service exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError("the service did not become ready")


@pytest.fixture(scope="module")
def ledger_config(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The configuration both processes serve with (and `verify` reads)."""
    config = tmp_path_factory.mktemp("spend") / "ledger.toml"
    config.write_text(
        helpers.database_toml(database_url)
        + "[spend]\nsweep_seconds = 0.2\n"
        + f'[[providers]]\nname = "medioot"\nprotocol = "medioot"\nsecret = "{MEDIOOT_SECRET}"\n'
        + f'[[api_keys]]\nname = "reader"\nkey = "{READ_KEY}"\nscopes = ["read"]\n'
        + f'[[api_keys]]\nname = "shop"\nkey = "{SPEND_KEY}"\nscopes = ["read", "spend"]\n'
    )
    return config


@pytest.fixture(scope="module")
def servers(ledger_config: Path) -> Iterator[list[str]]:
    """Two `python -m service serve` processes on one database: their base URLs."""
    config = ledger_config
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for _ in range(2):
            port = free_port()
            command = [sys.executable, "-m", "service", "serve", "--config", str(config)]
            process = subprocess.Popen(
                [*command, "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(process)
            urls.append(f"http://127.0.0.1:{port}")
            # One at a time: each applies the schema as it starts.
            _ready(urls[-1], process)
        yield urls
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
async def session() -> Any:
    # Enough connections that every request of a burst is in flight at once.
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def send(
    session: aiohttp.ClientSession,
    base: str,
    path: str,
    body: dict[str, Any],
    key: str | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    headers = {**SPEND, "Idempotency-Key": key or str(uuid.uuid4())}
    data = json.dumps(body).encode()
    async with session.post(f"{base}{path}", data=data, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def fund(session: aiohttp.ClientSession, base: str, amount: str) -> str:
    """A new user, credited `amount` by a Medioot postback."""
    user = unique("two")
    params = medioot(user, unique("tx"), amount)
    async with session.get(f"{base}/postbacks/medioot", params=params) as resp:
        assert (resp.status, await resp.text()) == (200, "OK")
    return user


async def wallet_of(session: aiohttp.ClientSession, base: str, user: str) -> dict[str, Any]:
    async with session.get(f"{base}/v1/wallets/{user}", headers=READ) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def check_row(pool: asyncpg.Pool, user: str, events: list[Event]) -> Any:
    """The wallet row agrees with the fold of `events` (the user's); the fold."""
    folded = wallet.fold(events)
    row = await pool.fetchrow("SELECT * FROM wallets WHERE user_id = $1", user)
    assert row is not None
    assert (row["balance"], row["total_debited"], row["event_count"]) == (
        folded.balance,
        folded.total_debited,
        folded.event_count,
    )
    return folded


async def check_books(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, base: str, user: str
) -> Any:
    """The wallet row and the API agree with the fold of the user's events; the API's wallet."""
    folded = await check_row(pool, user, await helpers.events_of(pool, user))
    w = await wallet_of(session, base, user)
    assert Decimal(w["balance"]) == folded.balance
    assert Decimal(w["available"]) >= 0
    return w


async def test_debits_from_both_processes_never_overdraw(
    servers: list[str], session: aiohttp.ClientSession, pool: asyncpg.Pool
) -> None:
    user = await fund(session, servers[0], "10")
    path = f"/v1/wallets/{user}/debits"
    answers = await asyncio.gather(
        *(send(session, servers[i % 2], path, {"amount": "0.75"}) for i in range(40))
    )
    statuses = [status for status, _, _ in answers]
    # 13 x 0.75 = 9.75: the 14th would take available below zero.
    assert sorted(statuses) == [201] * 13 + [409] * 27, statuses
    w = await check_books(pool, session, servers[1], user)
    assert (w["balance"], w["total_debited"], w["available"]) == ("0.25", "9.75", "0.25")
    events = await helpers.events_of(pool, user)
    assert sum(1 for e in events if e.type is EventType.DEBITED) == 13


async def test_mixed_debits_from_both_processes_refuse_only_what_did_not_fit(
    servers: list[str], session: aiohttp.ClientSession, pool: asyncpg.Pool
) -> None:
    user = await fund(session, servers[1], "20")
    amounts = [Decimal(f"{1 + i % 7}.{(i * 37) % 100:02d}") for i in range(30)]
    path = f"/v1/wallets/{user}/debits"
    answers = await asyncio.gather(
        *(send(session, servers[i % 2], path, {"amount": str(a)}) for i, a in enumerate(amounts))
    )
    taken = sum((a for a, (s, _, _) in zip(amounts, answers, strict=True) if s == 201), Decimal(0))
    refused = [a for a, (s, _, _) in zip(amounts, answers, strict=True) if s == 409]
    assert {s for s, _, _ in answers} <= {201, 409}
    assert taken <= 20
    w = await check_books(pool, session, servers[0], user)
    assert Decimal(w["total_debited"]) == taken
    assert Decimal(w["balance"]) == 20 - taken
    # No credit came in meanwhile, so available only fell: each refused debit is still too big.
    assert refused and all(a > Decimal(w["available"]) for a in refused)


async def test_one_idempotency_key_twenty_times_to_both_processes(
    servers: list[str], session: aiohttp.ClientSession, pool: asyncpg.Pool
) -> None:
    user = await fund(session, servers[0], "100")
    for path, body in (
        (f"/v1/wallets/{user}/debits", {"amount": "7.50", "reference": "order-1"}),
        (f"/v1/wallets/{user}/credits", {"amount": "2"}),
        (f"/v1/wallets/{user}/holds", {"amount": "3"}),
    ):
        key = str(uuid.uuid4())
        answers = await asyncio.gather(
            *(send(session, servers[i % 2], path, body, key) for i in range(20))
        )
        assert len({(status, raw) for status, raw, _ in answers}) == 1, answers
        assert answers[0][0] == 201
        replayed = [h.get("Idempotent-Replayed") for _, _, h in answers]
        assert replayed.count(None) == 1 and replayed.count("true") == 19
        count = await pool.fetchval(
            "SELECT count(*) FROM events WHERE provider = 'shop' AND key = $1", "request:" + key
        )
        assert count == 1
    hold_id = json.loads(answers[0][1])["hold"]["hold_id"]
    assert await pool.fetchval("SELECT count(*) FROM holds WHERE user_id = $1", user) == 1
    assert await pool.fetchval("SELECT hold_id FROM holds WHERE user_id = $1", user) == hold_id
    w = await check_books(pool, session, servers[1], user)
    assert (w["balance"], w["held"], w["available"]) == ("94.50", "3", "91.50")


async def test_one_key_with_two_bodies_to_both_processes_applies_one(
    servers: list[str], session: aiohttp.ClientSession, pool: asyncpg.Pool
) -> None:
    user = await fund(session, servers[0], "100")
    key, path = str(uuid.uuid4()), f"/v1/wallets/{user}/debits"
    bodies = [{"amount": "1"}, {"amount": "2"}]
    answers = await asyncio.gather(
        *(send(session, servers[i % 2], path, bodies[(i // 2) % 2], key) for i in range(20))
    )
    applied = {raw for status, raw, _ in answers if status == 201}
    assert len(applied) == 1
    amount = json.loads(applied.pop())["debit"]["amount"]
    sent = [bodies[(i // 2) % 2]["amount"] for i in range(20)]
    statuses = [status for status, _, _ in answers]
    # Every copy of the winning body got its answer; every copy of the other one 422.
    assert statuses == [201 if a == amount else 422 for a in sent]
    count = await pool.fetchval(
        "SELECT count(*) FROM events WHERE provider = 'shop' AND key = $1", "request:" + key
    )
    assert count == 1
    w = await check_books(pool, session, servers[1], user)
    assert Decimal(w["balance"]) == 100 - Decimal(amount)


async def test_holds_and_their_capture_or_void_across_processes(
    servers: list[str], session: aiohttp.ClientSession, pool: asyncpg.Pool
) -> None:
    user = await fund(session, servers[0], "10")
    answers = await asyncio.gather(
        *(
            send(session, servers[i % 2], f"/v1/wallets/{user}/holds", {"amount": "1.50"})
            for i in range(20)
        )
    )
    placed = [json.loads(raw)["hold"]["hold_id"] for status, raw, _ in answers if status == 201]
    assert sorted(s for s, _, _ in answers) == [201] * 6 + [409] * 14
    w = await wallet_of(session, servers[1], user)
    assert (w["held"], w["available"]) == ("9.00", "1.00")

    async def race(n: int, hold_id: str) -> list[tuple[int, bytes, dict[str, str]]]:
        # Captures of the whole hold or a part, and voids, each with its own key, to both.
        moves = [
            ("capture", {"amount": "0.50"}),
            ("void", {}),
            ("capture", {}),
        ]
        return list(
            await asyncio.gather(
                *(
                    send(
                        session,
                        servers[(i + n) % 2],
                        f"/v1/holds/{hold_id}/{moves[i % 3][0]}",
                        moves[i % 3][1],
                    )
                    for i in range(12)
                )
            )
        )

    results = await asyncio.gather(*(race(n, h) for n, h in enumerate(placed)))
    captured = Decimal(0)
    for hold_id, answers in zip(placed, results, strict=True):
        statuses = sorted(s for s, _, _ in answers)
        assert statuses == [200] + [409] * 11, (hold_id, statuses)
        winner = json.loads(next(raw for s, raw, _ in answers if s == 200))["hold"]
        refused = [json.loads(raw) for s, raw, _ in answers if s == 409]
        assert {r["error"] for r in refused} == {"hold_not_held"}
        captured += Decimal(winner["captured"])
        assert Decimal(winner["captured"]) + Decimal(winner["released"]) == Decimal("1.50")
        closings = await pool.fetchval(
            "SELECT count(*) FROM events WHERE key = $1", f"hold:{hold_id}:closed"
        )
        assert closings == 1
    w = await check_books(pool, session, servers[0], user)
    assert (Decimal(w["balance"]), w["held"]) == (10 - captured, "0")
    assert Decimal(w["total_debited"]) == captured


async def test_an_expired_hold_is_released_once_by_both_sweeps(
    servers: list[str], session: aiohttp.ClientSession, pool: asyncpg.Pool
) -> None:
    user = await fund(session, servers[0], "10")
    answers = await asyncio.gather(
        *(
            send(
                session,
                servers[i % 2],
                f"/v1/wallets/{user}/holds",
                {"amount": "2", "expires_in": 1},
            )
            for i in range(4)
        )
    )
    assert [s for s, _, _ in answers] == [201] * 4
    ids = [json.loads(raw)["hold"]["hold_id"] for _, raw, _ in answers]
    end = time.monotonic() + 10
    while time.monotonic() < end:
        released = await pool.fetchval(
            "SELECT count(*) FROM events WHERE user_id = $1 AND type = 'hold_released'", user
        )
        if released == 4:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # both sweeps have passed again since
    rows = await pool.fetch(
        "SELECT key, data->>'reason' AS reason FROM events"
        " WHERE user_id = $1 AND type = 'hold_released'",
        user,
    )
    assert sorted(r["key"] for r in rows) == sorted(f"hold:{h}:closed" for h in ids)
    assert {r["reason"] for r in rows} == {"expired"}
    w = await check_books(pool, session, servers[1], user)
    assert (w["balance"], w["held"], w["available"]) == ("10", "0", "10")


Answer = tuple[int, bytes, dict[str, str]]


async def retried(attempt: Any) -> Answer:
    """An answer other than 503: a 503 (shed, or the database away) is retried after its
    Retry-After, as walls and internal clients do."""
    for _ in range(50):
        answer: Answer = await attempt()
        if answer[0] != 503:
            return answer
        await asyncio.sleep(float(answer[2].get("Retry-After", "1")) / 10)
    raise AssertionError("still 503 after 50 attempts")


async def postback(session: aiohttp.ClientSession, base: str, params: dict[str, str]) -> Answer:
    async def attempt() -> Answer:
        async with session.get(f"{base}/postbacks/medioot", params=params) as resp:
            return resp.status, await resp.read(), dict(resp.headers)

    return await retried(attempt)


def spending_never_overdraws(events: list[Any]) -> tuple[Decimal, bool]:
    """Replay one user's events in order: every debit or hold leaves available (balance less
    what is held) at or above zero, and available is below zero only after a chargeback. The
    final available and whether a chargeback came."""
    links: dict[tuple[str, str], settlement.Settlement] = {}
    balance, held = ZERO, ZERO
    placed: dict[str, Decimal] = {}
    charged_back = False
    for event in sorted(events, key=lambda e: e.position):
        movement = settlement.move(links, event)
        change = EXACT.subtract(movement.credited, EXACT.add(movement.reversed, movement.debited))
        balance = EXACT.add(balance, change)
        charged_back = charged_back or movement.reversed > 0
        if event.type is EventType.HOLD_PLACED:
            placed[event.data["hold_id"]] = event.amount
            held = EXACT.add(held, event.amount)
        elif event.type in (EventType.HOLD_CAPTURED, EventType.HOLD_RELEASED):
            held = EXACT.subtract(held, placed.pop(event.data["hold_id"]))
        available = EXACT.subtract(balance, held)
        if event.type in (EventType.DEBITED, EventType.HOLD_PLACED):
            assert available >= 0, (event.key, available)
        assert available >= 0 or charged_back, (event.key, available)
    return EXACT.subtract(balance, held), charged_back


async def test_postbacks_and_spending_for_the_same_users_on_both_processes(
    servers: list[str],
    session: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    ledger_config: Path,
) -> None:
    """For 12 users at once, every request sent to the two processes in turn: postbacks (each
    sent twice, once to each), chargebacks of the first credit for half the users, debits and
    holds (each Idempotency-Key sent twice, once to each), then captures and voids of the holds
    racing more postbacks and debits. Whatever the interleaving: each wallet is the fold of its
    events, spending never takes available below zero (only a chargeback does), each postback
    is applied once, each Idempotency-Key has one effect and one answer, and the `verify`
    command exits 0."""
    rng = random.Random(20240611)
    users = [unique("both") for _ in range(12)]
    first_tx = {u: unique("tx") for u in users}
    turn = iter(range(10**9))

    def base() -> str:
        return servers[next(turn) % 2]

    requests = 0
    spends: dict[str, list[Answer]] = {}  # Idempotency-Key -> the answers to its copies

    async def twice_postback(params: dict[str, str]) -> None:
        nonlocal requests
        requests += 2
        answers = await asyncio.gather(*(postback(session, b, params) for b in servers))
        assert all(a[0] == 200 for a in answers), answers

    async def twice_spend(path: str, body: dict[str, Any]) -> None:
        nonlocal requests
        key = str(uuid.uuid4())
        requests += 2
        spends[key] = list(
            await asyncio.gather(
                *(retried(lambda b=b: send(session, b, path, body, key)) for b in servers)
            )
        )

    started = time.monotonic()
    # Each user starts with a credit of 20; half of them will have it charged back.
    await asyncio.gather(*(twice_postback(medioot(u, first_tx[u], "20")) for u in users))
    phase: list[Any] = []
    for i, user in enumerate(users):
        for _ in range(6):
            phase.append(twice_postback(medioot(user, unique("tx"), str(rng.randint(1, 5)))))
        if i % 2 == 0:
            phase.append(twice_postback(medioot(user, first_tx[user], "20", status="2")))
        for _ in range(10):
            amount = f"{rng.randint(1, 6)}.{rng.randint(0, 99):02d}"
            phase.append(twice_spend(f"/v1/wallets/{user}/debits", {"amount": amount}))
        for _ in range(4):
            phase.append(twice_spend(f"/v1/wallets/{user}/holds", {"amount": "3"}))
    rng.shuffle(phase)
    await asyncio.gather(*phase)

    holds = [
        json.loads(answers[0][1])["hold"]["hold_id"]
        for answers in spends.values()
        if answers[0][0] == 201 and b'"hold"' in answers[0][1]
    ]
    phase = []
    for hold_id in holds:
        for move, body in (("capture", {"amount": "1.25"}), ("void", {}), ("capture", {})):
            path = f"/v1/holds/{hold_id}/{move}"
            phase.append(retried(lambda path=path, body=body: send(session, base(), path, body)))
            requests += 1
    for user in users:
        for _ in range(3):
            phase.append(twice_postback(medioot(user, unique("tx"), "2")))
            amount = f"{rng.randint(1, 4)}.{rng.randint(0, 99):02d}"
            phase.append(twice_spend(f"/v1/wallets/{user}/debits", {"amount": amount}))
    rng.shuffle(phase)
    closing = [a for a in await asyncio.gather(*phase) if isinstance(a, tuple)]
    seconds = time.monotonic() - started

    # Each Idempotency-Key: one answer to both copies, and one effect when it applied.
    for key, answers in spends.items():
        assert len({(status, raw) for status, raw, _ in answers}) == 1, (key, answers)
        assert answers[0][0] in (201, 409), answers
        count = await pool.fetchval(
            "SELECT count(*) FROM events WHERE provider = 'shop' AND key = $1", "request:" + key
        )
        assert count == (1 if answers[0][0] == 201 else 0), key
    # Each hold ended once, whichever process was asked.
    assert sorted(a[0] for a in closing) == sorted([200] * len(holds) + [409] * 2 * len(holds))
    for hold_id in holds:
        closings = await pool.fetchval(
            "SELECT count(*) FROM events WHERE key = $1", f"hold:{hold_id}:closed"
        )
        assert closings == 1, hold_id
    # Each postback applied once: 1 + 6 + 3 credits, and the chargeback for even users.
    duplicated = await pool.fetch(
        "SELECT provider, key FROM events WHERE user_id = ANY($1::text[])"
        " GROUP BY provider, key HAVING count(*) > 1",
        users,
    )
    assert not duplicated
    for i, user in enumerate(users):
        events = await helpers.events_of(pool, user)
        credits = [e for e in events if e.type is EventType.CREDITED]
        reversals = [e for e in events if e.type is EventType.REVERSED]
        assert len(credits) == 10, user
        assert len(reversals) == (1 if i % 2 == 0 else 0), user
        folded = await check_row(pool, user, events)
        assert folded.balance == EXACT.subtract(
            folded.total_credited, EXACT.add(folded.total_reversed, folded.total_debited)
        )
        available, charged_back = spending_never_overdraws(events)
        assert charged_back == (i % 2 == 0)
        w = await wallet_of(session, servers[i % 2], user)
        assert Decimal(w["balance"]) == folded.balance
        assert Decimal(w["available"]) == available
        assert w["held"] in ("0", "0.00")
    code, out, err = await helpers.run_cli("verify", "--config", str(ledger_config))
    assert code == 0, out + err
    print(
        f"\ntwo processes: {requests} requests ({len(spends)} Idempotency-Keys sent twice,"
        f" {len(holds)} holds captured or voided) for {len(users)} users in {seconds:.1f} s;"
        f" verify: {out.strip() or err.strip().splitlines()[-1]}"
    )


async def test_verify_agrees_after_everything(servers: list[str], pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        report = await helpers.verify_log(conn)
    assert report.ok, report.differences
