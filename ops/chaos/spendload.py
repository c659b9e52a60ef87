"""Spending under faults: an internal service's load on the spending API, and its audit.

**The key.** The scenario's service gets one more API key, `chaos-shop`, with scopes read and
spend (`config_text`); its name is the `provider` of the spending events it makes.

**The load** (`SpendLoad`) is a few clients that act as a payments client does: each request is
an *operation* with an Idempotency-Key and a body fixed once; after a connection error, a
timeout, a 503 or another 5xx it is sent again, same key and same bytes, until it gets a
definitive answer (2xx, 409, 422, another 4xx) or the run ends. Operations: internal credits
(each with a reference of its own), debits, and holds that are later captured whole, captured in
part or voided (by the same key; holds last an hour, so none expires during a run). Now and then
an operation already answered 2xx is sent once more, to compare the replay with the first
answer; the first sending of some is cut by the client after a few milliseconds and sent again
at once, or sent twice at once, so that repeats overlap the request they repeat. The users are
wallets funded only by this key's credits (never charged back), and a few of the postback
load's users (whose credits are credited and reversed meanwhile).

**The audit** (`audit`) reads the event log, the wallets and nothing of the service's code:

- every operation answered 2xx has its event: `request:<Idempotency-Key>` under the key's name
  for a debit (`debited`), a credit (`credited`) or a hold (`hold_placed`, with the hold id the
  answer gave), `hold:<id>:closed` for a capture (`hold_captured`, the captured amount) or a
  void (`hold_released`, the whole hold, reason voided), with the right user and amount;
- nothing applied twice: one event per key, one `hold_placed` and at most one closing event per
  hold; no event this key made that no operation asked for;
- an operation whose definitive answer was 409 (nothing recorded, says the API) has no event;
- no 422: every repeat carried the same body; every 2xx answer to an operation is byte for byte
  its first, and at most one of them lacks `Idempotent-Replayed: true`;
- every wallet holds what its events make: the postbacks under the money rules of
  `common.expected_wallets`, plus internal credits, minus debits and captures
  (balance = credited - reversed - debited);
- on a wallet that never had a chargeback, `available` (balance - holds not yet ended) is never
  below zero: in no answer, not at the end, and not event after event in the log's order (a
  debit or hold recorded before a credit it was decided after shows as one there).
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from ops.chaos import common
from ops.chaos.common import Report

SPENDER = "chaos-shop"  # the key's name: the `provider` of its events (never a wall's name)
SPEND_KEY = "chaos-spend-key-0001"
HOLD_SECONDS = 3600  # longer than any run: no hold expires under the load
KINDS = ("debit", "credit", "hold", "capture", "void")
# Shares of each operation; a capture or void needs a hold to close (else: a debit).
MIX = {"credit": 0.3, "debit": 0.3, "hold": 0.2, "close": 0.2}
RESEND = 0.1  # share of operations answered 2xx that are sent once more, to compare the replay
# Shares of operations whose first sending is cut by the client after a few milliseconds (it
# gives up waiting and sends again, while the service may still be at the first), or sent twice
# at once (two retries racing): repeats that overlap the request they repeat.
CUT = 0.1
TWIN = 0.1


def config_text() -> str:
    """The spending key's entry, to append to a scenario's service configuration."""
    return (
        f"\n[[api_keys]]\nname = {json.dumps(SPENDER)}\nkey = {json.dumps(SPEND_KEY)}\n"
        'scopes = ["read", "spend"]\n'
    )


def add_key(config: Path) -> None:
    config.write_text(config.read_text() + config_text())


@dataclass(slots=True, eq=False)
class Attempt:
    """One sending of an operation. Times are time.monotonic()."""

    start: float
    end: float = 0.0
    http: int | None = None
    body: bytes = b""
    replayed: bool = False  # answered with Idempotent-Replayed: true
    error: str = ""
    resent: bool = False  # sent once more after a 2xx, on purpose
    # Sent beside another sending of the same request, or given up on by the client while the
    # service may still be at it: either may be decided after the other's answer.
    overlapping: bool = False

    @property
    def outcome(self) -> str:
        if self.http is None:
            return self.error.split(":", 1)[0] or "no answer"
        return str(self.http)

    @property
    def retryable(self) -> bool:
        return self.http is None or self.http >= 500


@dataclass(eq=False)
class Op:
    """One spending request and every sending of it, under one Idempotency-Key."""

    seq: int
    kind: str  # debit, credit, hold, capture, void
    user: str
    key: str  # the Idempotency-Key
    path: str
    body: bytes
    amount: Decimal  # of the event it makes: a capture's captured part, a void's whole hold
    hold_id: str = ""  # a capture's or void's hold; a hold's, from its answer
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def answers(self) -> list[Attempt]:
        return [a for a in self.attempts if a.http is not None and 200 <= a.http < 300]

    @property
    def acknowledged(self) -> bool:
        return bool(self.answers)

    @property
    def definitive(self) -> Attempt | None:
        """The first answer that ended the retries."""
        return next((a for a in self.attempts if not a.retryable), None)

    @property
    def retried(self) -> bool:
        """Sent more than once before its first definitive answer (or the end of the run)."""
        return sum(1 for a in self.attempts if not a.resent) > 1

    @property
    def event_key(self) -> str:
        if self.kind in ("capture", "void"):
            return f"hold:{self.hold_id}:closed"
        return f"request:{self.key}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "user": self.user,
            "key": self.key,
            "path": self.path,
            "body": self.body.decode(),
            "amount": str(self.amount),
            "hold_id": self.hold_id,
        }


@dataclass(slots=True, eq=False)
class _Open:
    """A hold answered 201, not yet closed."""

    hold_id: str
    user: str
    amount: Decimal


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    """An amount from `low` to `high` cents, sometimes a whole number."""
    cents = rng.randrange(low, high + 1)
    if rng.random() < 0.2:
        return Decimal(max(1, cents // 100))
    return Decimal(cents).scaleb(-2)


class SpendLoad:
    """Spending operations from `concurrency` clients, paced to `rate` per second overall,
    retried under their Idempotency-Key until answered (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        own_users: int = 20,
        shared_users: Sequence[str] = (),
        concurrency: int = 4,
        rate: float = 60.0,
        seed: int = 0,
        timeout: float = 30.0,
        backoff: float = 0.2,
        finish: float = 5.0,
    ) -> None:
        self.url = url
        self.own = [f"s{i:03d}-{seed % 10000:04d}" for i in range(own_users)]
        self.users = [*self.own, *shared_users]
        self.concurrency = concurrency
        self.rate = rate
        self.rng = random.Random(seed * 7919 + 1)
        self.run = f"{seed:x}"
        self.timeout = timeout
        self.backoff = backoff
        self.finish = finish
        self.ops: list[Op] = []
        self.inflight: dict[int, Op] = {}  # by id() of the attempt
        self.pending_at_end: list[Op] = []
        self._open: list[_Open] = []
        self._seq = 0
        self._due = 0.0
        self._stopping = False
        self._stopped_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"Authorization": f"Bearer {SPEND_KEY}", "Content-Type": "application/json"},
        )
        self._due = time.monotonic()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.concurrency)]

    async def stop(self, drain: float = 35.0) -> None:
        """Start nothing more; retry for `finish` seconds more at most; wait up to `drain`
        seconds for the answers still expected (one still missing then is recorded as pending:
        the service hung)."""
        self._stopping = True
        self._stopped_at = time.monotonic()

        def unanswered() -> None:
            self.pending_at_end = list({id(op): op for op in self.inflight.values()}.values())
            for op in self.pending_at_end:
                for attempt in op.attempts:
                    if id(attempt) in self.inflight:
                        attempt.error = (
                            f"PENDING: no answer within {drain:g} s of the end of the load"
                        )

        await common.wind_down(self._tasks, self._session, drain, unanswered, "the spending load")

    def _next(self) -> Op:
        rng = self.rng
        self._seq += 1
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        key = f"chaos-{self.run}-{self._seq}"
        if kind == "close" and self._open:
            i = rng.randrange(len(self._open))
            hold = self._open[i]
            self._open[i] = self._open[-1]
            self._open.pop()
            path = f"/v1/holds/{hold.hold_id}"
            choice = rng.random()
            if choice < 1 / 3:
                body = rng.choice([b"", b"{}"])
                return Op(
                    self._seq,
                    "void",
                    hold.user,
                    key,
                    path + "/void",
                    body,
                    hold.amount,
                    hold.hold_id,
                )
            amount = hold.amount
            body = rng.choice([b"", b"{}"])
            if choice < 2 / 3 and amount > Decimal("0.01"):
                cents = int(amount * 100)
                amount = Decimal(rng.randrange(1, cents)).scaleb(-2)
                body = json.dumps({"amount": str(amount)}).encode()
            elif rng.random() < 0.5:
                body = json.dumps({"amount": str(amount)}).encode()
            return Op(
                self._seq, "capture", hold.user, key, path + "/capture", body, amount, hold.hold_id
            )
        if kind == "close":
            kind = "debit"
        user = rng.choice(self.users)
        fields: dict[str, Any] = {}
        if kind == "credit":
            amount = _money(rng, 1_000, 30_000)
            fields["reference"] = f"grant-{self.run}-{self._seq}"  # one wall transaction each
        elif kind == "debit":
            amount = _money(rng, 1, 3_000)
            if rng.random() < 0.5:
                fields["reference"] = f"order-{self.run}-{self._seq}"
        else:
            amount = _money(rng, 100, 4_000)
            fields["expires_in"] = HOLD_SECONDS
        payload = {"amount": str(amount), **fields}
        path = f"/v1/wallets/{user}/{kind}s"
        return Op(self._seq, kind, user, key, path, json.dumps(payload).encode(), amount)

    async def _pace(self) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        due = max(self._due, now - 0.1)
        self._due = due + 1 / self.rate
        if due > now:
            await asyncio.sleep(due - now)

    async def _client(self) -> None:
        while not self._stopping:
            await self._pace()
            if self._stopping:
                return
            op = self._next()
            self.ops.append(op)
            await self._until_answered(op)
            if op.acknowledged and self.rng.random() < RESEND:
                await self._until_answered(op, resent=True)
            if op.kind == "hold" and op.acknowledged:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    op.hold_id = str(json.loads(op.answers[0].body)["hold"]["hold_id"])
                if op.hold_id:
                    self._open.append(_Open(op.hold_id, op.user, op.amount))

    async def _until_answered(self, op: Op, resent: bool = False) -> None:
        """Send `op` until a definitive answer, or until the run ends (`finish` seconds after
        the load stops)."""
        first = not op.attempts
        while True:
            draw = self.rng.random() if first else 1.0
            first = False
            if draw < TWIN:
                twins = await asyncio.gather(
                    self._send(op, resent, overlapping=True),
                    self._send(op, resent, overlapping=True),
                )
                if any(not a.retryable for a in twins) or self._over():
                    return
                continue
            cut = self.rng.uniform(0.002, 0.03) if draw < TWIN + CUT else None
            attempt = await self._send(op, resent, cut, overlapping=cut is not None)
            if cut is not None and attempt.http is None:
                continue  # gave up waiting: again at once
            if not attempt.retryable or self._over():
                return
            await asyncio.sleep(self.backoff * (1 + self.rng.random()))
            if self._over():
                return

    def _over(self) -> bool:
        return self._stopping and time.monotonic() > self._stopped_at + self.finish

    async def _send(
        self, op: Op, resent: bool, cut: float | None = None, *, overlapping: bool = False
    ) -> Attempt:
        assert self._session is not None
        attempt = Attempt(time.monotonic(), resent=resent, overlapping=overlapping)
        op.attempts.append(attempt)
        self.inflight[id(attempt)] = op
        limit = aiohttp.ClientTimeout(total=cut) if cut is not None else None
        try:
            headers = {"Idempotency-Key": op.key}
            async with self._session.post(
                self.url + op.path, data=op.body, headers=headers, timeout=limit
            ) as r:
                attempt.body = await r.read()
                attempt.http = r.status
                attempt.replayed = r.headers.get("Idempotent-Replayed") == "true"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            attempt.end = time.monotonic()
            self.inflight.pop(id(attempt), None)
        return attempt

    def dump(self, path: Path, t0: float) -> None:
        """Every operation and its attempts, one JSON object a line, times from `t0`."""
        with path.open("w") as out:
            for op in self.ops:
                row = op.as_dict()
                row["attempts"] = [
                    {
                        "start": round(a.start - t0, 4),
                        "end": round(a.end - t0, 4),
                        "http": a.http,
                        "body": a.body.decode(errors="replace")[:300],
                        "replayed": a.replayed,
                        "error": a.error,
                        "resent": a.resent,
                        "overlapping": a.overlapping,
                    }
                    for a in op.attempts
                ]
                out.write(json.dumps(row) + "\n")


@contextlib.asynccontextmanager
async def running(load: SpendLoad, drain: float = 35.0) -> AsyncIterator[SpendLoad]:
    load.start()
    try:
        yield load
    finally:
        await load.stop(drain)


# --- the audit -----------------------------------------------------------------------------------


@dataclass
class KindFigures:
    ops: int = 0
    acknowledged: int = 0
    retried: int = 0  # acknowledged after more than one sending
    recovered: int = 0  # every 2xx a replay: the sending that applied it lost its answer
    refused: int = 0  # definitive 409
    unresolved: int = 0  # the run ended before a definitive answer
    lost: list[str] = field(default_factory=list)  # acknowledged, no event or a wrong one
    doubled: list[str] = field(default_factory=list)  # applied more than once


@dataclass
class SpendAudit:
    kinds: dict[str, KindFigures] = field(default_factory=dict)
    attempts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    retries_422: list[str] = field(default_factory=list)  # a repeat of the same body refused
    refused_recorded: list[str] = field(default_factory=list)  # 409, yet its event exists
    replays_compared: int = 0
    replays_differ: list[str] = field(default_factory=list)
    answered_new_twice: list[str] = field(default_factory=list)  # 2xx not marked a replay, twice
    phantom: list[str] = field(default_factory=list)  # events of the key nobody asked for
    http_500: int = 0  # 500, 502, 504...: 503 is the service's answer to retry later
    other_status: list[str] = field(default_factory=list)  # 400, 404, ...: not expected here
    pending: int = 0
    events: int = 0
    wallets_checked: int = 0
    wallets_off: list[str] = field(default_factory=list)  # every wallet, postbacks included
    never_charged_back: int = 0
    below_zero: list[str] = field(default_factory=list)  # in an answer or at the end
    # In the log's order: a debit or hold recorded before a credit it was decided after.
    log_order: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(len(k.lost) for k in self.kinds.values())

    @property
    def doubled(self) -> int:
        return sum(len(k.doubled) for k in self.kinds.values())


SPEND_EVENTS_SQL = """
SELECT key, type, user_id, amount, data->>'hold_id' AS hold_id, data->>'reason' AS reason
FROM events WHERE provider = $1 ORDER BY position
"""
SPEND_WALLETS_SQL = """
SELECT user_id, balance, total_credited, total_reversed, total_debited, event_count FROM wallets
"""
WALLET_FIELDS = ("balance", "total_credited", "total_reversed", "total_debited", "event_count")
Totals = tuple[Decimal, Decimal, Decimal, Decimal, int]


def expected_wallets(events: Iterable[Any], spender: str = SPENDER) -> dict[str, Totals]:
    """Every wallet as its events make it (in position order): the postbacks under the money
    rules of `common.expected_wallets`, the spending key's credits added, its debits and
    captures taken (balance = credited - reversed - debited); every event counts."""
    rows = list(events)
    postbacks, _ = common.expected_wallets(e for e in rows if e["provider"] != spender)
    credited: dict[str, Decimal] = defaultdict(Decimal)
    debited: dict[str, Decimal] = defaultdict(Decimal)
    count: Counter[str] = Counter()
    with decimal.localcontext(decimal.Context(prec=200)):
        for e in rows:
            if e["provider"] != spender:
                continue
            user = e["user_id"]
            count[user] += 1
            if e["type"] == "credited":
                credited[user] += e["amount"]
            elif e["type"] in ("debited", "hold_captured"):
                debited[user] += e["amount"]
        totals: dict[str, Totals] = {}
        for user in postbacks.keys() | count.keys():
            _, pb_credited, pb_reversed, pb_count = postbacks.get(
                user, (Decimal(0), Decimal(0), Decimal(0), 0)
            )
            c = Decimal(pb_credited) + credited[user]
            d = debited[user]
            totals[user] = (c - pb_reversed - d, c, Decimal(pb_reversed), d, pb_count + count[user])
    return totals


def available_below_zero(
    events: Iterable[Any], holds: dict[str, str], spender: str = SPENDER
) -> tuple[list[str], list[str], set[str]]:
    """Among the wallets that never had a chargeback: those whose balance minus the holds not
    yet ended goes below zero, event after event in the log's order (the first time each), and
    those where it ends below zero; and the wallets that never had one. Such a wallet's balance
    is the sum of its credits (nothing takes one back) less its debits and captures. `holds`:
    the hold of each of the spending key's hold events, by event key."""
    rows = list(events)
    charged = {e["user_id"] for e in rows if e["type"] == "reversed" and not e["test"]}
    balance: dict[str, Decimal] = defaultdict(Decimal)
    held: dict[str, Decimal] = defaultdict(Decimal)
    placed: dict[str, Decimal] = {}
    found: dict[str, str] = {}
    with decimal.localcontext(decimal.Context(prec=200)):
        for e in rows:
            user = e["user_id"]
            if user in charged or e["test"]:
                continue
            kind = e["type"]
            if kind == "credited":
                balance[user] += e["amount"]
            elif kind in ("debited", "hold_captured"):
                balance[user] -= e["amount"]
            if e["provider"] == spender and kind == "hold_placed":
                placed[holds[e["key"]]] = e["amount"]
                held[user] += e["amount"]
            elif e["provider"] == spender and kind in ("hold_captured", "hold_released"):
                held[user] -= placed.pop(holds[e["key"]], Decimal(0))
            available = balance[user] - held[user]
            if available < 0 and user not in found:
                found[user] = (
                    f"{user}: available {available} after {e['key']} (balance {balance[user]},"
                    f" held {held[user]})"
                )
    users = {e["user_id"] for e in rows} - charged
    at_end = [
        f"{u}: available {balance[u] - held[u]} at the end"
        for u in sorted(users)
        if balance[u] < held[u]
    ]
    return [found[u] for u in sorted(found)], at_end, users


async def audit(dsn: str, ops: Sequence[Op], pending: int = 0) -> SpendAudit:
    """Compare what the spending clients were told with what the database holds."""
    a = SpendAudit(pending=pending)
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        rows = await conn.fetch(SPEND_EVENTS_SQL, SPENDER)
        every = await conn.fetch(common.WALLET_EVENTS_SQL)
        wallets = {r["user_id"]: r for r in await conn.fetch(SPEND_WALLETS_SQL)}
    finally:
        await conn.close()
    a.events = len(rows)
    by_key: dict[str, list[Any]] = defaultdict(list)
    placed: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    for r in rows:
        by_key[r["key"]].append(r)
        if r["type"] == "hold_placed":
            placed[str(r["hold_id"])] += 1
        elif r["type"] in ("hold_captured", "hold_released"):
            closed[str(r["hold_id"])] += 1

    want = {"debit": "debited", "credit": "credited", "hold": "hold_placed"}
    want |= {"capture": "hold_captured", "void": "hold_released"}
    asked: set[str] = set()
    for op in ops:
        k = a.kinds.setdefault(op.kind, KindFigures())
        k.ops += 1
        for attempt in op.attempts:
            a.attempts += 1
            a.outcomes[attempt.outcome] += 1
            if attempt.http == 422:
                a.retries_422.append(f"{op.kind} {op.key}: {attempt.body[:120]!r}")
            elif attempt.http is not None and attempt.http >= 500 and attempt.http != 503:
                a.http_500 += 1
            elif attempt.http is not None and attempt.http not in (200, 201, 409, 422, 503):
                a.other_status.append(f"{op.kind} {op.key}: {attempt.http} {attempt.body[:120]!r}")
        event_key = op.event_key
        if op.kind in ("debit", "credit", "hold") or op.hold_id:
            asked.add(event_key)
        found = by_key.get(event_key, [])
        if len(found) > 1:
            k.doubled.append(f"{event_key} x{len(found)}")
        if op.kind == "hold" and op.hold_id and placed[op.hold_id] > 1:
            k.doubled.append(f"hold {op.hold_id} placed x{placed[op.hold_id]}")
        definitive = op.definitive
        if not op.acknowledged:
            if definitive is None:
                k.unresolved += 1
            elif definitive.http == 409:
                k.refused += 1
                mine = [e for e in found if e["type"] == want[op.kind]]
                if op.kind in ("capture", "void"):
                    mine = [e for e in mine if e["amount"] == op.amount]
                # A refusal is not stored: a sending still unanswered beside it may apply later.
                raced = any(x.overlapping and x.http is None for x in op.attempts)
                if mine and not raced:
                    a.refused_recorded.append(f"{op.kind} {op.key}: {_event(mine[0])}")
            continue
        k.acknowledged += 1
        k.retried += op.retried
        k.recovered += all(x.replayed for x in op.answers)
        answers = op.answers
        if len(answers) > 1:
            a.replays_compared += 1
            first = answers[0]
            if any((x.http, x.body) != (first.http, first.body) for x in answers[1:]):
                a.replays_differ.append(f"{op.kind} {op.key}")
            if sum(not x.replayed for x in answers) > 1:
                a.answered_new_twice.append(f"{op.kind} {op.key}")
        if not found:
            k.lost.append(f"{op.kind} {op.key} ({op.user}, {op.amount}): no event {event_key}")
            continue
        e = found[0]
        right = (e["type"], e["user_id"], e["amount"]) == (want[op.kind], op.user, op.amount)
        if op.kind == "hold":
            right = right and e["hold_id"] == op.hold_id
        if op.kind == "void":
            right = right and e["reason"] == "voided"
        if not right:
            k.lost.append(f"{op.kind} {op.key} ({op.user}, {op.amount}): {_event(e)}")
    for hold, n in closed.items():
        if n > 1:
            a.kinds.setdefault("capture", KindFigures()).doubled.append(f"hold {hold} closed x{n}")
    a.phantom = sorted(k for k in by_key if k not in asked)

    # The wallets, all of them: what the audit of the postbacks checks, with spending added.
    owed = expected_wallets(every)
    for user in sorted(owed.keys() | wallets.keys()):
        w, row = owed.get(user), wallets.get(user)
        have = None if row is None else tuple(row[f] for f in WALLET_FIELDS)
        a.wallets_checked += 1
        if have != w:
            a.wallets_off.append(f"{user}: {_totals(have)} vs {_totals(w)} from events")
    holds = {r["key"]: str(r["hold_id"]) for r in rows if r["hold_id"] is not None}
    a.log_order, a.below_zero, clean = available_below_zero(every, holds)
    spenders = {op.user for op in ops}
    a.never_charged_back = len(clean & spenders)
    for op in ops:
        if op.user in clean:
            for answer in op.answers:
                available = _available(answer.body)
                if available is not None and available < 0:
                    a.below_zero.append(f"{op.kind} {op.key}: answered available {available}")
    return a


def _available(body: bytes) -> Decimal | None:
    try:
        return Decimal(str(json.loads(body)["wallet"]["available"]))
    except (ValueError, KeyError, TypeError, decimal.InvalidOperation):
        return None


def _event(e: Any) -> str:
    return f"{e['type']} {e['user_id']} {e['amount']}"


def _totals(values: Sequence[Any] | None) -> str:
    if values is None:
        return "no wallet"
    return ", ".join(f"{name} {value}" for name, value in zip(WALLET_FIELDS, values, strict=True))


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common()) or "-"


LOG_ORDER = "  ... or replaying the log in its order (wallets)"
PLURALS = {"debit": "debits", "credit": "credits", "hold": "holds"}
PLURALS |= {"capture": "captures", "void": "voids"}


def report(rep: Report, a: SpendAudit) -> None:
    """The spending side: what was asked, acknowledged, retried, lost and doubled. The wallets
    (`a.wallets_off`) are the postback audit's row: this check replaces its own there."""
    rep.heading(f"spending (API key {SPENDER}; retried under the same Idempotency-Key)")
    ops = sum(k.ops for k in a.kinds.values())
    by_kind = Counter({kind: a.kinds[kind].ops for kind in KINDS if kind in a.kinds})
    rep.add("spending requests (operations)", f"{ops}: {_counts(by_kind)}")
    rep.add("  sendings, retries included", f"{a.attempts}: {_counts(a.outcomes)}")
    for kind in KINDS:
        k = a.kinds.get(kind)
        if k is None:
            continue
        name = PLURALS[kind]
        rep.add(
            f"{name} acknowledged (2xx)",
            f"{k.acknowledged} of {k.ops} ({k.retried} after retries, {k.recovered} of them"
            f" applied by a sending whose answer was lost; {k.refused} answered 409;"
            f" {k.unresolved} unanswered at the end)",
        )
        rep.add(f"  {name} lost (acknowledged, no or wrong event)", len(k.lost), not k.lost, "0")
        rep.add(f"  {name} doubled (applied more than once)", len(k.doubled), not k.doubled, "0")
    rep.add("answered 409, yet recorded", len(a.refused_recorded), not a.refused_recorded, "0")
    rep.add("422 to a repeat of the same body", len(a.retries_422), not a.retries_422, "0")
    rep.add(
        "replays differing from the first 2xx",
        f"{len(a.replays_differ)} of {a.replays_compared} compared",
        not a.replays_differ,
        "0",
    )
    rep.add(
        "  2xx without Idempotent-Replayed more than once",
        len(a.answered_new_twice),
        not a.answered_new_twice,
        "0",
    )
    rep.add("events of the key nobody asked for", len(a.phantom), not a.phantom, "0")
    rep.add("HTTP 5xx but 503 (spending)", a.http_500, a.http_500 == 0, "0")
    rep.add("other 4xx answers (spending)", len(a.other_status), not a.other_status, "0")
    rep.add("spending requests still pending at the end", a.pending, a.pending == 0, "0")
    rep.add(
        "available below zero without a chargeback, in an answer or at the end",
        f"{len(a.below_zero)} ({a.never_charged_back} spending wallets never charged back)",
        not a.below_zero,
        "0",
    )
    rep.add(
        LOG_ORDER,
        len(a.log_order),
        not a.log_order,
        "0",
    )
    rep.add("spending events in the log", a.events)
    problems: list[tuple[str, list[str]]] = [
        (f"{PLURALS[kind]} lost", k.lost) for kind, k in a.kinds.items()
    ]
    problems += [(f"{PLURALS[kind]} doubled", k.doubled) for kind, k in a.kinds.items()]
    problems += [
        ("409 yet recorded", a.refused_recorded),
        ("422", a.retries_422),
        ("replay differs", a.replays_differ),
        ("answered new twice", a.answered_new_twice),
        ("spending phantom", a.phantom),
        ("spending 4xx", a.other_status),
        ("below zero", a.below_zero),
        ("below zero in the log's order", a.log_order),
    ]
    for label, items in problems:
        if items:
            rep.note(f"{label}: {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}")
