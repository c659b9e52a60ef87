"""The one write path: `append(pool, batch)` records a batch of postbacks and spending requests
in one transaction.

For every submission it decides the outcome (new event, duplicate, conflict, a signature replay,
or the refusal the handler already found); for every spending request, what it does to its
wallet and hold (domain/spending.py) or the answer its Idempotency-Key already has. It appends
the new events, folds them into the settlements, receipt offers, wallets and holds, stores the
spending answers and writes the postback log, all in the same transaction: an answer is only
given for what has committed. Within a batch, spending requests are decided first, in arrival
order, against the wallets as they were before the batch; its postbacks are applied after them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from .. import metrics
from ..domain import admission, holds, receipt_offers, settlement, spending, wallet
from ..domain.events import AuthReason, Event, Outcome, Postback
from ..logs import log
from ..providers.base import Answer
from . import Unavailable, connection, struct, translated
from .write_sql import (
    ANSWERS,
    EXISTING_EVENTS,
    HOLDS,
    INSERT,
    LOCK_AND_SIGN,
    OFFERS,
    PRUNE_ANSWERS,
    SETTLEMENTS,
    SIGNATURES,
    SPEND_STATE,
    UPSERT_OFFERS,
    project,
)

Key = tuple[str, str]

_ATTEMPTS = 3
FEED_CHANNEL = "ledger_events"


@dataclass(frozen=True, slots=True)
class LogEntry:
    request_id: str
    provider: str
    method: str
    client_ip: str | None
    params: dict[str, str]
    # Read from the parameters of a refused postback (a normalised one names its own).
    user_id: str | None = None
    transaction: str | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    """One received postback: normalised, or already refused (`refusal`, `refusal_status`)."""

    log: LogEntry
    answer: Callable[[Outcome, str], Answer]
    postback: Postback | None = None
    refusal: Outcome = Outcome.INVALID
    refusal_detail: str = ""
    refusal_status: int = 400
    refusal_reason: AuthReason | None = None  # why authentication failed, for the log


@dataclass(frozen=True, slots=True)
class Receipt:
    outcome: Outcome
    detail: str
    answer: Answer
    position: int | None
    # Why authentication failed, for a postback the write path refused as a replay.
    auth_reason: AuthReason | None = None


@dataclass(frozen=True, slots=True)
class Spent:
    """What a spending request did, for its answer: its events as recorded, and its wallet
    (and hold) right after them, at `at`, the transaction's time."""

    command: spending.Command
    events: list[Event]
    account: spending.Account
    hold: holds.Hold | None
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Spend:
    """One spending request; `render` gives its answer (status, body) once decided, applied or
    refused, and that answer is stored for the repeats of its Idempotency-Key."""

    command: spending.Command
    render: Callable[[Spent | spending.Refusal], tuple[int, bytes]] | None = None


@dataclass(frozen=True, slots=True)
class SpendReceipt:
    """The answer to a spending request (`status`, `body`): what it did (`spent`), a refusal,
    or a stored answer given again (`replayed`); none of the three for an expiry with nothing
    left to do. `body` is empty only for a request without `render`, and for a refusal of its
    Idempotency-Key (`spending.REUSED`, `EXPIRED_KEY`), which the caller renders."""

    status: int = 200
    body: bytes = b""
    spent: Spent | None = None
    refusal: spending.Refusal | None = None
    replayed: bool = False


Item = Submission | Spend
Result = Receipt | SpendReceipt


# What must match for a repeat to be a duplicate rather than a conflict; for a receipt status
# event, also which offer it is about and the status it reports.
Fingerprint = tuple[str, str, Decimal, bool, str | None, str | None]


@dataclass(frozen=True, slots=True)
class _Stored:
    fingerprint: Fingerprint
    position: int


def _fingerprint(p: Postback) -> Fingerprint:
    offer = receipt_offers.offer_key(p)
    status = str(p.data.get("status")) if offer else None
    return (p.type.value, p.user_id, p.amount, p.test, status, offer[1] if offer else None)


async def notify_feed(pool: asyncpg.Pool) -> None:
    """Wake the feed's long-polling readers (every process LISTENs). Sent after commit, in its
    own transaction: a transaction that NOTIFYs holds a database-wide lock until its commit is
    flushed, which would make every batch's commit wait for the one before."""
    with translated():
        await pool.execute("SELECT pg_notify($1, '')", FEED_CHANNEL)


async def prune_answers(pool: asyncpg.Pool, older_than_days: float, limit: int = 10_000) -> int:
    """Delete up to `limit` stored idempotency answers older than `older_than_days`; how many."""
    with translated():
        status: str = await pool.execute(PRUNE_ANSWERS, older_than_days * 86400, limit)
    return int(status.rsplit(" ", 1)[-1])


async def append(pool: asyncpg.Pool, batch: Sequence[Item]) -> list[Result]:
    """Record `batch` in one transaction; raises `Unavailable` when that cannot be done."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with translated():
                async with pool.acquire() as conn, conn.transaction():
                    await connection.transaction_settings(conn)
                    results, new = await _append(conn, batch)
            break
        except (Unavailable, _Contended) as exc:
            retriable = isinstance(exc, _Contended) or isinstance(
                exc.__cause__, asyncpg.TransactionRollbackError
            )
            if not retriable or attempt == _ATTEMPTS:
                if isinstance(exc, _Contended):
                    raise Unavailable(f"write contended: {exc}") from exc
                raise
            log.warning("write transaction rolled back, retrying", attempt=attempt, error=str(exc))
    for postback in new:
        metrics.event_appended(postback.type)
    for item, result in zip(batch, results, strict=True):
        if isinstance(item, Submission) and isinstance(result, Receipt) and result.auth_reason:
            metrics.SIGNATURE_FAILURES.labels(
                provider=item.log.provider, reason=result.auth_reason
            ).inc()
    return results


async def _append(
    conn: asyncpg.Connection, batch: Sequence[Item]
) -> tuple[list[Result], list[Postback]]:
    submissions = [item for item in batch if isinstance(item, Submission)]
    spends = [item for item in batch if isinstance(item, Spend)]
    postbacks = [sub.postback for sub in submissions if sub.postback is not None]
    recorded = await _lock_and_sign(conn, postbacks, _spend_locks(spends))
    unsigned = admission.signature_refusals(
        postbacks, await _signature_uses(conn, postbacks, recorded)
    )

    # The first copy of each key that its signature authenticates is the candidate; later copies
    # are judged against whatever the log holds for that key, as a copy in a later batch would be.
    candidates: dict[Key, Postback] = {}
    for p in postbacks:
        if id(p) not in unsigned:
            candidates.setdefault((p.provider, p.key), p)
    links = await _settlements(conn, list(candidates.values()))
    offers = await _offers(conn, list(candidates.values()))
    refused, resolved = admission.admit(
        sorted(candidates.items()), links, {k: o.user_id for k, o in offers.items()}
    )
    # What is written: a reversal linked by its click carries the link it was given.
    admitted = {k: resolved.get(k, p) for k, p in candidates.items() if k not in refused}
    plan = await _plan(conn, spends)
    written = {**admitted, **plan.events}  # API key names are never provider names
    # Positions in the order things were decided: the spending events first, in the order the
    # plan decided them (a debit may rest on a credit just before it), then the postbacks',
    # which apply after them. The postbacks' go sorted by key, so that two batches inserting the
    # same keys wait on them in one order; no two batches can insert the same spending key,
    # since each is inserted under its user's or its Idempotency-Key's lock.
    ordered = [*plan.events.values(), *(admitted[k] for k in sorted(admitted))]

    inserted: dict[Key, int] = {}
    rows_of: dict[Key, asyncpg.Record] = {}
    stored: dict[Key, _Stored] = {}
    if ordered:
        rows = await conn.fetch(INSERT, *_event_columns(ordered))
        rows_of = {(r["provider"], r["key"]): r for r in rows}
        inserted = {key: r["position"] for key, r in rows_of.items()}
        if any(key not in inserted for key in plan.events):
            # Decided under the locks from rows that said these keys were free: retry afresh.
            raise _Contended("a spending event's key was taken meanwhile")
        for key, position in inserted.items():
            if key in admitted:
                stored[key] = _Stored(_fingerprint(admitted[key]), position)
        skipped = [k for k in admitted if k not in inserted]
        if skipped:
            rows = await conn.fetch(
                EXISTING_EVENTS, [k[0] for k in skipped], [k[1] for k in skipped]
            )
            for r in rows:
                fingerprint = (
                    r["type"],
                    r["user_id"],
                    r["amount"],
                    r["test"],
                    r["status"],
                    r["offer"],
                )
                stored[(r["provider"], r["key"])] = _Stored(fingerprint, r["position"])

    # In position order: the order the receipt state machine and the settlements must see each
    # offer's and each transaction's events in.
    new = [written[k] for k in sorted(inserted, key=inserted.__getitem__)]
    # What each event moves first (pure), so that a receipt offer counts what its events moved;
    # the settlements themselves are written last, with the wallets.
    moved, settled = _settle(new, inserted, links)
    decided = await _apply_receipts(conn, new, inserted, offers, moved)
    receipts: list[Receipt] = []
    fresh: set[Key] = set()
    for sub in submissions:
        pb = sub.postback
        refusal = None
        if pb is not None:
            refusal = unsigned.get(id(pb))
            if refusal is None and candidates.get((pb.provider, pb.key)) is pb:
                refusal = refused.get((pb.provider, pb.key))
        if refusal is not None:
            receipts.append(_refused(sub, refusal))
        else:
            receipts.append(_judge(sub, inserted, stored, decided, moved, fresh))
    answered = _answer_spends(spends, plan, rows_of)

    statement = project(
        settle=bool(settled),
        wallets=bool(new),
        holds=bool(plan.holds),
        answers=bool(answered.stored),
        log=bool(submissions),
    )
    params: list[list[Any]] = []
    if settled:
        params += _settlement_columns(settled)
    if new:
        params += _wallet_columns(new, inserted, moved)
    if plan.holds:
        params += _hold_columns(plan, inserted)
    if answered.stored:
        params += _answer_columns(answered.stored)
    if submissions:
        params += _log_columns(submissions, receipts)
    if params:
        written_settlements = await conn.fetchval(statement, *params)
        if written_settlements != len(settled):
            raise _Contended(
                f"{len(settled) - written_settlements} wall transactions changed meanwhile"
            )
    # Back in the batch's order (the same submission may come twice: judge each copy).
    postback_results, spend_results = iter(receipts), iter(answered.receipts)
    results: list[Result] = [
        next(postback_results) if isinstance(item, Submission) else next(spend_results)
        for item in batch
    ]
    return results, new


class _Contended(Exception):
    """A settlement changed between its read and its write (write_sql.SETTLE): retry the batch."""


async def _lock_and_sign(
    conn: asyncpg.Connection, postbacks: list[Postback], spend_locks: set[str]
) -> dict[admission.SignatureName, admission.SignatureUse]:
    """Take the batch's locks; record the signatures first seen here (write_sql.LOCK_AND_SIGN)
    and return their first uses."""
    if not postbacks and not spend_locks:
        return {}
    # Sorted, so that two batches inserting the same signatures wait on them in one order.
    uses = sorted(admission.first_uses(postbacks).items())
    recorded = await conn.fetch(
        LOCK_AND_SIGN,
        sorted(_lock_names(postbacks) | spend_locks),
        [name[0] for name, _ in uses],
        [name[1] for name, _ in uses],
        [use.values for _, use in uses],
        [use.reversal for _, use in uses],
    )
    new = {(r["provider"], bytes(r["signature"])) for r in recorded if r["provider"] is not None}
    return {name: use for name, use in uses if name in new}


def _spend_locks(spends: list[Spend]) -> set[str]:
    """A spending request holds its user's lock (the one every write to that wallet takes) and
    its Idempotency-Key's, so that the copies of one request are decided one after another."""
    names: set[str] = set()
    for spend in spends:
        c = spend.command
        names.add(f"user:{c.user_id}")
        if c.idempotency_key is not None:  # API key names hold no ':'
            names.add(f"idem:{c.api_key}:{c.idempotency_key}")
    return names


async def _signature_uses(
    conn: asyncpg.Connection,
    postbacks: list[Postback],
    recorded: dict[admission.SignatureName, admission.SignatureUse],
) -> dict[admission.SignatureName, admission.SignatureUse]:
    """The first use of every signature of the batch: `recorded` here, or read."""
    uses = dict(recorded)
    seen = sorted(
        {(p.provider, p.signed.signature) for p in postbacks if p.signed is not None} - set(uses)
    )
    if seen:
        # The locks and the unique key leave each signature exactly one committed row by now.
        rows = await conn.fetch(SIGNATURES, [k[0] for k in seen], [k[1] for k in seen])
        for r in rows:
            uses[(r["provider"], bytes(r["signature"]))] = admission.SignatureUse(
                bytes(r["signed"]), r["reversal"]
            )
    return uses


async def _settlements(conn: asyncpg.Connection, postbacks: list[Postback]) -> settlement.Links:
    names = sorted({n for p in postbacks if (n := settlement.link(p)) is not None})
    if not names:
        return {}
    clicks = sorted({c for p in postbacks if (c := settlement.click(p)) is not None})
    rows = await conn.fetch(
        SETTLEMENTS,
        [n[0] for n in names],
        [n[1] for n in names],
        [c[0] for c in clicks],
        [c[1] for c in clicks],
    )
    return {(r["provider"], r["link"]): struct(settlement.Settlement, r) for r in rows}


Offers = dict[tuple[str, str], receipt_offers.ReceiptOffer]


async def _offers(conn: asyncpg.Connection, postbacks: list[Postback]) -> Offers:
    keys = sorted({k for p in postbacks if (k := receipt_offers.offer_key(p)) is not None})
    if not keys:
        return {}
    rows = await conn.fetch(OFFERS, [k[0] for k in keys], [k[1] for k in keys])
    return {
        (r["provider"], r["upload_offer_id"]): struct(receipt_offers.ReceiptOffer, r) for r in rows
    }


def _lock_names(postbacks: list[Postback]) -> set[str]:
    names = {f"user:{p.user_id}" for p in postbacks}
    for p in postbacks:  # provider names hold no ':'
        offer = receipt_offers.offer_key(p)
        if offer is not None:
            names.add(f"offer:{offer[0]}:{offer[1]}")
        name = settlement.link(p)
        if name is not None:
            names.add(f"link:{name[0]}:{name[1]}")
        clicked = settlement.click(p)
        if clicked is not None:
            names.add(f"click:{clicked[0]}:{clicked[1]}")
    return names


# What a batch's spending requests do, in arrival order: for each, a decision (its events, and
# the account and hold after them), a refusal, an answer stored for its Idempotency-Key, the index
# of an earlier copy in the batch whose answer it gets, or None (an expiry with nothing to do).
_Outcome = spending.Decision | spending.Refusal | spending.Stored | int | None


@dataclass
class _Plan:
    outcomes: list[_Outcome] = field(default_factory=list)
    events: dict[Key, Postback] = field(default_factory=dict)
    holds: dict[str, tuple[holds.Hold, Key]] = field(default_factory=dict)  # with its last event


async def _plan(conn: asyncpg.Connection, spends: list[Spend]) -> _Plan:
    """Decide the batch's spending requests from the state read under its locks."""
    plan = _Plan()
    if not spends:
        return plan
    commands = [spend.command for spend in spends]
    rows = await conn.fetch(SPEND_STATE, sorted({c.user_id for c in commands}))
    now: dt.datetime = rows[0]["now"]
    accounts = {r["user_id"]: spending.Account(struct(wallet.Wallet, r), r["held"]) for r in rows}
    named = sorted({c.hold_id for c in commands if c.kind in _NAMES_A_HOLD})
    states: dict[str, holds.Hold] = {}
    if named:
        states = {r["hold_id"]: struct(holds.Hold, r) for r in await conn.fetch(HOLDS, named)}
    answers = await _stored_answers(conn, commands)
    firsts: dict[tuple[str, str], int] = {}
    for i, c in enumerate(commands):
        name = (c.api_key, c.idempotency_key or "")
        if c.idempotency_key is not None:
            judged: _Outcome = spending.judge_key(c, answers.get(name))
            if judged is None and name in firsts:
                same = commands[firsts[name]].fingerprint == c.fingerprint
                judged = firsts[name] if same else spending.REUSED
            if judged is not None:
                plan.outcomes.append(judged)
                continue
        hold = states.get(c.hold_id) if c.kind in _NAMES_A_HOLD else None
        if hold is not None and (hold.owner, hold.user_id) != (c.api_key, c.user_id):
            hold = None  # another key's hold: as if it did not exist
        decided = spending.decide(c, accounts.get(c.user_id, spending.Account()), hold, now)
        if isinstance(decided, spending.Decision):
            accounts[c.user_id] = decided.account
            event = decided.events[-1]
            plan.events.update({(e.provider, e.key): e for e in decided.events})
            if decided.hold is not None:
                states[c.hold_id] = decided.hold
                plan.holds[c.hold_id] = (decided.hold, (event.provider, event.key))
        if c.idempotency_key is not None and decided is not None:
            firsts[name] = i  # its answer, an effect's or a refusal's, is the key's
        plan.outcomes.append(decided)
    return plan


_NAMES_A_HOLD = frozenset({spending.Kind.CAPTURE, spending.Kind.VOID, spending.Kind.EXPIRE})


async def _stored_answers(
    conn: asyncpg.Connection, commands: list[spending.Command]
) -> dict[tuple[str, str], spending.Stored]:
    keyed = sorted({(c.api_key, c.idempotency_key) for c in commands if c.idempotency_key})
    if not keyed:
        return {}
    rows = await conn.fetch(ANSWERS, [k[0] for k in keyed], [k[1] for k in keyed])
    answers: dict[tuple[str, str], spending.Stored] = {}
    for r in rows:
        if r["status"] is not None:
            answers[(r["api_key"], r["key"])] = spending.Stored(
                bytes(r["fingerprint"]), r["status"], bytes(r["body"])
            )
        elif r["used"]:
            answers[(r["api_key"], r["key"])] = spending.Stored(b"", 0, b"")
    return answers


@dataclass
class _Answered:
    receipts: list[SpendReceipt] = field(default_factory=list)
    # (command, status, body) of each first answer to an Idempotency-Key, to store
    stored: list[tuple[spending.Command, int, bytes]] = field(default_factory=list)


def _answer_spends(spends: list[Spend], plan: _Plan, rows: dict[Key, asyncpg.Record]) -> _Answered:
    answered = _Answered()
    for spend, outcome in zip(spends, plan.outcomes, strict=True):
        if isinstance(outcome, int):  # a copy of an earlier request of the batch
            first = answered.receipts[outcome]
            receipt = SpendReceipt(first.status, first.body, replayed=True)
        elif isinstance(outcome, spending.Stored):
            receipt = SpendReceipt(outcome.status, outcome.body, replayed=True)
        elif outcome in (spending.REUSED, spending.EXPIRED_KEY):  # about the key: not stored
            assert isinstance(outcome, spending.Refusal)
            receipt = SpendReceipt(outcome.status, refusal=outcome)
        elif outcome is None:
            receipt = SpendReceipt()
        else:
            spent, refusal = None, None
            if isinstance(outcome, spending.Decision):
                events = [_recorded(e, rows[(e.provider, e.key)]) for e in outcome.events]
                at = events[0].recorded_at
                spent = Spent(spend.command, events, outcome.account, outcome.hold, at)
            else:
                refusal = outcome
            result = spent or refusal
            assert result is not None
            status, body = (refusal.status if refusal else 200, b"")
            if spend.render is not None:
                status, body = spend.render(result)
            receipt = SpendReceipt(status, body, spent=spent, refusal=refusal)
            # The first answer to a key is kept, a refusal's too: a repeat gets the same answer
            # even if, say, funds arrived meanwhile (a client told "refused" must not be charged
            # by its own retry).
            if spend.command.idempotency_key is not None and spend.render is not None:
                answered.stored.append((spend.command, status, body))
        answered.receipts.append(receipt)
    return answered


def _recorded(p: Postback, row: asyncpg.Record) -> Event:
    return Event(
        position=row["position"],
        provider=p.provider,
        key=p.key,
        type=p.type,
        user_id=p.user_id,
        amount=p.amount,
        provider_ref=p.provider_ref,
        test=p.test,
        data=p.data,
        recorded_at=row["recorded_at"],
        hash=bytes(row["hash"]).hex(),
    )


async def _apply_receipts(
    conn: asyncpg.Connection,
    new: list[Postback],
    inserted: dict[Key, int],
    offers: Offers,
    moved: dict[Key, settlement.Movement],
) -> dict[Key, Outcome]:
    """Fold the new receipt status events (each with what it moved) into their offers; the
    outcome of each."""
    events = [p for p in new if receipt_offers.offer_key(p) is not None]
    if not events:
        return {}
    states = dict(offers)
    decided: dict[Key, Outcome] = {}
    last: dict[tuple[str, str], int] = {}
    for p in events:
        offer = receipt_offers.offer_key(p)
        assert offer is not None
        key = (p.provider, p.key)
        states[offer], decided[key] = receipt_offers.apply(
            states.get(offer, receipt_offers.ReceiptOffer()), p, moved[key]
        )
        last[offer] = inserted[key]
    changed = sorted(last)
    await conn.execute(
        UPSERT_OFFERS,
        [k[0] for k in changed],
        [k[1] for k in changed],
        [states[k].upload_id for k in changed],
        [states[k].offer_id for k in changed],
        [states[k].user_id for k in changed],
        [states[k].status for k in changed],
        [states[k].points_credited for k in changed],
        [states[k].approvals for k in changed],
        [states[k].event_count for k in changed],
        [last[k] for k in changed],
    )
    return decided


_Settled = dict[tuple[str, str], tuple[settlement.Settlement, int]]


def _settle(
    new: list[Postback], inserted: dict[Key, int], links: settlement.Links
) -> tuple[dict[Key, settlement.Movement], _Settled]:
    """What each new event moves, and the settlements it changed (with their last position)."""
    states = dict(links)
    moved: dict[Key, settlement.Movement] = {}
    settled: _Settled = {}
    for p in new:
        key = (p.provider, p.key)
        moved[key] = settlement.move(states, p)
        name = settlement.link(p)
        if name is not None:
            settled[name] = (states[name], inserted[key])
    return moved, settled


def _refused(sub: Submission, refusal: admission.Refusal) -> Receipt:
    answer = sub.answer(refusal.outcome, refusal.detail)
    return Receipt(refusal.outcome, refusal.detail, answer, None, refusal.auth_reason)


# The status each kind of refusal has unless something more particular happened (413, 404...).
_USUAL_STATUS = {Outcome.INVALID: 400, Outcome.REJECTED: 403, Outcome.IGNORED: 200}


def refusal_receipt(sub: Submission) -> Receipt:
    """The answer to a postback refused before it reached the write path: the wall's own
    convention for a malformed, unauthenticated or acknowledged postback (a profile may answer
    a bad signature with, say, Tapjoy's 403 or Kiwiwall's `0`), but the particular status of a
    particular refusal (a body too large: 413) as is."""
    answer = sub.answer(sub.refusal, sub.refusal_detail)
    if sub.refusal_status != _USUAL_STATUS.get(sub.refusal):
        answer = Answer(sub.refusal_status, sub.refusal_detail)
    return Receipt(sub.refusal, sub.refusal_detail, answer, None)


def _judge(
    sub: Submission,
    inserted: dict[Key, int],
    stored: dict[Key, _Stored],
    decided: dict[Key, Outcome],
    moved: dict[Key, settlement.Movement],
    fresh: set[Key],
) -> Receipt:
    p = sub.postback
    if p is None:
        return refusal_receipt(sub)
    key = (p.provider, p.key)
    s = stored.get(key)
    if s is None:  # a copy of a candidate refused as a conflict: nothing of the key is stored
        outcome = Outcome.CONFLICT
        detail = "refused with an earlier copy in the same batch"
        return Receipt(outcome, detail, sub.answer(outcome, detail), None)
    if key in inserted and key not in fresh:
        fresh.add(key)
        outcome = decided.get(key) or wallet.outcome(moved[key])
        detail = f"recorded as event {s.position}"
        if outcome is Outcome.IGNORED:
            detail += ": the receipt offer is already APPROVED"
    elif s.fingerprint == _fingerprint(p):
        outcome, detail = Outcome.DUPLICATE, f"already recorded as event {s.position}"
    else:
        outcome = Outcome.CONFLICT
        detail = f"already recorded with different values as event {s.position}"
    return Receipt(outcome, detail, sub.answer(outcome, detail), s.position)


def _event_columns(postbacks: list[Postback]) -> list[list[Any]]:
    return [
        [p.provider for p in postbacks],
        [p.key for p in postbacks],
        [p.type.value for p in postbacks],
        [p.user_id for p in postbacks],
        [p.amount for p in postbacks],
        [p.provider_ref for p in postbacks],
        [p.test for p in postbacks],
        [msgspec.json.encode(p.data).decode() for p in postbacks],
    ]


def _settlement_columns(settled: _Settled) -> list[list[Any]]:
    names = sorted(settled)
    rows = [settled[n] for n in names]
    return [
        [n[0] for n in names],
        [n[1] for n in names],
        [s.click for s, _ in rows],
        [s.credit_key for s, _ in rows],
        [s.credit_user for s, _ in rows],
        [s.credited for s, _ in rows],
        [s.reversal_key for s, _ in rows],
        [s.reversal_user for s, _ in rows],
        [s.reversed for s, _ in rows],
        [s.reversal_whole for s, _ in rows],
        [position for _, position in rows],
    ]


def _wallet_columns(
    new: list[Postback], inserted: dict[Key, int], moved: dict[Key, settlement.Movement]
) -> list[list[Any]]:
    # The wallet fold is a sum, so folding a batch's movements from zero gives the change to add.
    deltas: dict[str, wallet.Wallet] = {}
    last: dict[str, int] = {}
    for p in new:
        key = (p.provider, p.key)
        deltas[p.user_id] = wallet.apply(deltas.get(p.user_id, wallet.Wallet()), moved[key])
        last[p.user_id] = max(last.get(p.user_id, 0), inserted[key])
    users = sorted(deltas)
    return [
        users,
        [deltas[u].balance for u in users],
        [deltas[u].total_credited for u in users],
        [deltas[u].total_reversed for u in users],
        [deltas[u].total_debited for u in users],
        [deltas[u].event_count for u in users],
        [last[u] for u in users],
    ]


def _hold_columns(plan: _Plan, inserted: dict[Key, int]) -> list[list[Any]]:
    ids = sorted(plan.holds)
    rows = [plan.holds[i] for i in ids]
    return [
        ids,
        [h.owner for h, _ in rows],
        [h.user_id for h, _ in rows],
        [h.amount for h, _ in rows],
        [h.status for h, _ in rows],
        [h.captured for h, _ in rows],
        [h.released for h, _ in rows],
        [h.expires_at for h, _ in rows],
        [h.reference for h, _ in rows],
        [inserted[last] for _, last in rows],
    ]


def _answer_columns(stored: list[tuple[spending.Command, int, bytes]]) -> list[list[Any]]:
    return [
        [c.api_key for c, _, _ in stored],
        [c.idempotency_key for c, _, _ in stored],
        [c.fingerprint for c, _, _ in stored],
        [status for _, status, _ in stored],
        [body for _, _, body in stored],
    ]


def _log_columns(batch: Sequence[Submission], receipts: list[Receipt]) -> list[list[Any]]:
    return [
        [s.log.request_id for s in batch],
        [s.log.provider for s in batch],
        [r.outcome.value for r in receipts],
        [r.answer.status for r in receipts],
        [r.detail for r in receipts],
        [s.log.client_ip for s in batch],
        [s.log.method for s in batch],
        [msgspec.json.encode(s.log.params).decode() for s in batch],
        [r.position for r in receipts],
        [s.log.user_id if s.postback is None else s.postback.user_id for s in batch],
        [s.log.transaction if s.postback is None else s.postback.provider_ref for s in batch],
        [r.auth_reason or s.refusal_reason for s, r in zip(batch, receipts, strict=True)],
    ]
