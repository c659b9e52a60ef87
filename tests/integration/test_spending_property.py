"""Spending mixed with wall postbacks, through HTTP against real PostgreSQL: any interleaving of
Medioot credits and chargebacks, internal credits, debits, holds, captures (whole or part),
voids and repeats of earlier requests, some steps sent concurrently, keeps the wallet row and
the API equal to the fold of the user's events, never takes `available` below zero unless a
chargeback did, records exactly one event per applied debit, credit and hold (and one end per
hold), nothing for a refused request, and `verify` agrees."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain import wallet
from service.domain.amounts import ZERO
from service.domain.events import EventType
from tests import helpers
from tests.helpers import AUTH, SPEND_AUTH, medioot, unique

Client = TestClient[web.Request, web.Application]

amounts = st.integers(min_value=1, max_value=3_000)  # cents
hold_ref = st.integers(0, 9)  # which earlier hold (or request) it names
# One request: what it is, an amount in cents, which earlier hold or request it names. Debits,
# holds and what ends holds are drawn more often than the rest.
request = st.one_of(
    st.tuples(st.just("wall"), amounts, st.just(0)),
    st.tuples(st.just("chargeback"), amounts, hold_ref),
    st.tuples(st.just("credit"), amounts, st.just(0)),
    *[st.tuples(st.just("debit"), amounts, st.just(0))] * 2,
    *[st.tuples(st.just("hold"), amounts, st.just(0))] * 3,
    *[st.tuples(st.just("capture"), st.integers(0, 2_000), hold_ref)] * 2,  # 0: whole
    *[st.tuples(st.just("void"), st.just(0), hold_ref)] * 2,
    st.tuples(st.just("repeat"), st.just(0), hold_ref),
)
# Steps: each a few requests, sent one after another or all at once.
steps = st.lists(
    st.tuples(st.booleans(), st.lists(request, min_size=1, max_size=6)), min_size=1, max_size=6
)


def cents(n: int) -> str:
    return str(Decimal(n).scaleb(-2))


@dataclass
class Sent:
    """A spending request and its answer."""

    kind: str
    path: str
    key: str
    body: bytes
    status: int = 0
    answer: Any = None
    raw: bytes = b""
    replayed: bool = False


@dataclass
class Run:
    user: str
    spends: list[Sent] = field(default_factory=list)
    walls: list[tuple[str, str]] = field(default_factory=list)  # (transid, reward) credited
    holds: list[str] = field(default_factory=list)
    chargebacks: int = 0


async def spend(client: Client, sent: Sent) -> Sent:
    headers = {**SPEND_AUTH, "Idempotency-Key": sent.key}
    resp = await client.post(sent.path, data=sent.body, headers=headers)
    raw = await resp.read()
    answer = json.loads(raw)
    replayed = resp.headers.get("Idempotent-Replayed") == "true"
    done = Sent(sent.kind, sent.path, sent.key, sent.body, resp.status, answer, raw, replayed)
    assert resp.status < 500, (sent, answer)
    return done


async def wall(client: Client, params: dict[str, str]) -> None:
    resp = await client.get("/postbacks/medioot", params=params)
    assert resp.status == 200, await resp.text()


def prepare(run: Run, kind: str, amount: int, which: int) -> Sent | dict[str, str] | None:
    """The request a generated step sends, from what earlier steps answered."""
    user = run.user
    if kind == "wall":
        transid, reward = unique("tx"), cents(amount)
        run.walls.append((transid, reward))
        return medioot(user, transid, reward)
    if kind == "chargeback":
        run.chargebacks += 1
        transid = run.walls[which % len(run.walls)][0] if run.walls else unique("tx")
        return medioot(user, transid, cents(amount), status="2")
    key = str(uuid.uuid4())
    if kind in ("credit", "debit", "hold"):
        placing = json.dumps({"amount": cents(amount)}).encode()
        return Sent(kind, f"/v1/wallets/{user}/{kind}s", key, placing)
    if kind in ("capture", "void"):
        if not run.holds and which > 1:
            return None  # mostly, wait for a hold; sometimes name one that does not exist
        hold_id = run.holds[which % len(run.holds)] if run.holds else "h_missing"
        body = json.dumps({"amount": cents(amount)} if kind == "capture" and amount else {})
        return Sent(kind, f"/v1/holds/{hold_id}/{kind}", key, body.encode())
    if not run.spends:
        return None
    earlier = run.spends[which % len(run.spends)]
    return Sent(earlier.kind, earlier.path, earlier.key, earlier.body)


WALLET_FIELDS = ("balance", "total_debited", "held", "available")


def wallet_numbers(body: dict[str, Any]) -> list[Decimal]:
    return [Decimal(body[f]) for f in WALLET_FIELDS] + [Decimal(body["event_count"])]


async def send(
    client: Client, run: Run, prepared: Sent | dict[str, str], alone: bool = False
) -> None:
    """Send one request; `alone`: nothing else is in flight, so the wallet it answers with is
    the wallet as it stands."""
    if isinstance(prepared, dict):
        await wall(client, prepared)
        return
    done = await spend(client, prepared)
    run.spends.append(done)
    if done.kind == "hold" and done.status == 201 and not done.replayed:
        run.holds.append(done.answer["hold"]["hold_id"])
    if alone and done.status < 300 and not done.replayed:
        resp = await client.get(f"/v1/wallets/{run.user}", headers=AUTH)
        now = await resp.json()
        answered = done.answer["wallet"]
        assert wallet_numbers(answered) == wallet_numbers(now), done


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps, chargebacks=st.booleans())
async def test_any_interleaving_keeps_the_books(
    client: Client,
    pool: asyncpg.Pool,
    plan: list[tuple[bool, list[tuple[str, int, int]]]],
    chargebacks: bool,
) -> None:
    run = Run(unique("prop"))
    # Something to spend first, as a wall credit.
    first = prepare(run, "wall", 2_000, 0)
    assert first is not None
    await send(client, run, first)
    for together, requests in plan:
        prepared = []
        for kind, amount, which in requests:
            one = prepare(
                run, "wall" if kind == "chargeback" and not chargebacks else kind, amount, which
            )
            if one is not None and together:
                prepared.append(one)
            elif one is not None:  # one after another: each may name what the last placed
                await send(client, run, one, alone=True)
        await asyncio.gather(*(send(client, run, p) for p in prepared))

    events = await helpers.events_of(pool, run.user)
    folded = wallet.fold(events)
    row = await pool.fetchrow("SELECT * FROM wallets WHERE user_id = $1", run.user)
    assert row is not None
    assert (
        wallet.Wallet(
            row["balance"],
            row["total_credited"],
            row["total_reversed"],
            row["total_debited"],
            row["event_count"],
        )
        == folded
    )
    resp = await client.get(f"/v1/wallets/{run.user}", headers=AUTH)
    api = await resp.json()
    assert (Decimal(api["balance"]), api["event_count"]) == (folded.balance, len(events))
    live = await pool.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM holds"
        " WHERE user_id = $1 AND status = 'held' AND expires_at > now()",
        run.user,
    )
    assert Decimal(api["held"]) == live
    assert Decimal(api["available"]) == folded.balance - live

    # Every applied debit, credit and hold has exactly one event, under its key; a refused one
    # (and a repeat) none of its own. A repeat is only ever sent once its original answered, so
    # once a key has a 2xx answer every later answer to it is those very bytes. (A refusal is
    # not stored: a repeat of one is decided afresh, see the test below.)
    by_key: dict[str, list[Sent]] = {}
    for s in run.spends:  # in the order they were answered
        by_key.setdefault(s.key, []).append(s)
    applied = {k for k, sent in by_key.items() if any(s.status < 300 for s in sent)}
    for sent in by_key.values():
        done = [s for s in sent if s.status < 300]
        if done:
            later = sent[sent.index(done[0]) :]
            assert {(s.status, s.raw) for s in later} == {(done[0].status, done[0].raw)}, later
            assert sum(1 for s in later if not s.replayed) <= 1
    placing = {k for k in applied if by_key[k][0].kind in ("credit", "debit", "hold")}
    request_events = {e.key.removeprefix("request:"): e for e in events if e.provider == "shop"}
    request_events = {k: e for k, e in request_events.items() if e.key.startswith("request:")}
    assert set(request_events) == placing
    for k in placing:
        first = next(s for s in by_key[k] if s.status < 300)
        types = {"debit": EventType.DEBITED, "credit": EventType.CREDITED}
        assert request_events[k].type is types.get(first.kind, EventType.HOLD_PLACED)
        assert str(request_events[k].amount) == json.loads(first.body)["amount"]
    # Each hold ended at most once: by the one capture or void answered 200.
    closers = [s for s in run.spends if s.kind in ("capture", "void") and s.status == 200]
    ended = {s.answer["hold"]["hold_id"] for s in closers}
    closings = [e for e in events if e.key.startswith("hold:")]
    assert sorted(e.key for e in closings) == sorted(f"hold:{h}:closed" for h in ended)
    assert len(ended) == len({s.key for s in closers})
    captured = sum((e.amount for e in closings if e.type is EventType.HOLD_CAPTURED), ZERO)
    debited = sum(
        (
            Decimal(json.loads(by_key[k][0].body)["amount"])
            for k in placing
            if by_key[k][0].kind == "debit"
        ),
        ZERO,
    )
    assert folded.total_debited == debited + captured

    if not run.chargebacks:
        assert Decimal(api["available"]) >= 0
        for s in run.spends:
            if s.status < 300:
                assert Decimal(s.answer["wallet"]["available"]) >= 0, s
    async with pool.acquire() as conn:
        report = await helpers.verify_log(conn)
    assert report.ok, report.differences


async def test_a_repeat_of_a_refused_debit_gets_the_refusal_again(client: Client) -> None:
    """The Idempotency-Key's documented rule (OpenAPI): a repeat of the same request with the
    same key gets the first answer again, byte for byte, even when funds arrived meanwhile."""
    user = unique("refused")
    assert (await client.get("/postbacks/medioot", params=medioot(user, unique("tx"), "5"))).ok
    headers = {**SPEND_AUTH, "Idempotency-Key": str(uuid.uuid4())}
    body = json.dumps({"amount": "10"}).encode()
    first = await client.post(f"/v1/wallets/{user}/debits", data=body, headers=headers)
    assert first.status == 409
    assert (await client.get("/postbacks/medioot", params=medioot(user, unique("tx"), "10"))).ok
    again = await client.post(f"/v1/wallets/{user}/debits", data=body, headers=headers)
    assert (again.status, await again.read()) == (409, await first.read())


async def test_a_wallets_history_never_runs_below_zero_without_a_chargeback(
    client: Client, pool: asyncpg.Pool
) -> None:
    """An internal credit and a debit it funds, sent together for many users (so that the
    write path batches them): replayed in position order, no balance ever dips below zero."""
    users = [unique("order") for _ in range(40)]

    async def post(user: str, kind: str, key: str) -> int:
        headers = {**SPEND_AUTH, "Idempotency-Key": key}
        resp = await client.post(
            f"/v1/wallets/{user}/{kind}", data=b'{"amount": "10"}', headers=headers
        )
        return resp.status

    # The credit is sent first; its key sorts after the debit's.
    calls = [
        post(u, kind, f"{prefix}-{u}")
        for u in users
        for kind, prefix in (("credits", "b"), ("debits", "a"))
    ]
    await asyncio.gather(*calls)  # a debit decided before its credit was refused: fine
    lowest: dict[str, Decimal] = {}
    for user in users:
        running, low = ZERO, ZERO
        for event in await helpers.events_of(pool, user):
            moved = wallet.alone(event)
            running += moved.credited - moved.reversed - moved.debited
            low = min(low, running)
        lowest[user] = low
    assert {u: low for u, low in lowest.items() if low < 0} == {}
