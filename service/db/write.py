"""The one write path: `append(pool, batch)` records a batch of postbacks in one transaction.

For every submission it decides the outcome (new event, duplicate, conflict, a signature replay,
or the refusal the handler already found), appends the new events, folds them into the
settlements, receipt offers and wallets, and writes the postback log, all in the same
transaction: an answer is only given for what has committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import msgspec

from .. import metrics
from ..domain import admission, receipt_offers, settlement, wallet
from ..domain.events import AuthReason, Outcome, Postback
from ..logs import log
from ..providers.base import Answer
from . import Unavailable, translated
from .write_sql import (
    EXISTING_EVENTS,
    INSERT,
    INSERT_LOG,
    LOCK_AND_SIGN,
    OFFERS,
    PROJECT_AND_LOG,
    SETTLEMENTS,
    SIGNATURES,
    UPSERT_OFFERS,
    WALLETS_AND_LOG,
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


@dataclass(frozen=True, slots=True)
class Submission:
    """One received postback: normalised, or already refused (`refusal`, `refusal_status`)."""

    log: LogEntry
    answer: Callable[[Outcome, str], Answer]
    postback: Postback | None = None
    refusal: Outcome = Outcome.INVALID
    refusal_detail: str = ""
    refusal_status: int = 400


@dataclass(frozen=True, slots=True)
class Receipt:
    outcome: Outcome
    detail: str
    answer: Answer
    position: int | None
    # Why authentication failed, for a postback the write path refused as a replay.
    auth_reason: AuthReason | None = None


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


async def append(pool: asyncpg.Pool, batch: Sequence[Submission]) -> list[Receipt]:
    """Record `batch` in one transaction; raises `Unavailable` when that cannot be done."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with translated():
                async with pool.acquire() as conn, conn.transaction():
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
        metrics.EVENTS.labels(type=postback.type.value).inc()
    for sub, receipt in zip(batch, results, strict=True):
        if receipt.auth_reason is not None:
            metrics.SIGNATURE_FAILURES.labels(
                provider=sub.log.provider, reason=receipt.auth_reason
            ).inc()
    return results


async def _append(
    conn: asyncpg.Connection, batch: Sequence[Submission]
) -> tuple[list[Receipt], list[Postback]]:
    postbacks = [sub.postback for sub in batch if sub.postback is not None]
    unsigned = admission.signature_refusals(
        postbacks, await _signature_uses(conn, postbacks, await _lock_and_sign(conn, postbacks))
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
    ordered = [admitted[k] for k in sorted(admitted)]

    inserted: dict[Key, int] = {}
    stored: dict[Key, _Stored] = {}
    if ordered:
        rows = await conn.fetch(INSERT, *_event_columns(ordered))
        inserted = {(r["provider"], r["key"]): r["position"] for r in rows}
        for key, position in inserted.items():
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
    new = [admitted[k] for k in sorted(inserted, key=inserted.__getitem__)]
    # What each event moves first (pure), so that a receipt offer counts what its events moved;
    # the settlements themselves are written last, with the wallets.
    moved, settled = _settle(new, inserted, links)
    decided = await _apply_receipts(conn, new, inserted, offers, moved)
    results: list[Receipt] = []
    fresh: set[Key] = set()
    for sub in batch:
        pb = sub.postback
        refusal = None
        if pb is not None:
            refusal = unsigned.get(id(pb))
            if refusal is None and candidates.get((pb.provider, pb.key)) is pb:
                refusal = refused.get((pb.provider, pb.key))
        if refusal is not None:
            results.append(_refused(sub, refusal))
        else:
            results.append(_judge(sub, inserted, stored, decided, moved, fresh))

    log = _log_columns(batch, results)
    if settled:
        written = await conn.fetchval(
            PROJECT_AND_LOG,
            *_settlement_columns(settled),
            *_wallet_columns(new, inserted, moved),
            *log,
        )
        if written != len(settled):
            raise _Contended(f"{len(settled) - written} wall transactions changed meanwhile")
    elif new:
        await conn.execute(WALLETS_AND_LOG, *_wallet_columns(new, inserted, moved), *log)
    else:
        await conn.execute(INSERT_LOG, *log)
    return results, new


class _Contended(Exception):
    """A settlement changed between its read and its write (write_sql.SETTLE): retry the batch."""


async def _lock_and_sign(
    conn: asyncpg.Connection, postbacks: list[Postback]
) -> dict[admission.SignatureName, admission.SignatureUse]:
    """Take the batch's locks; record the signatures first seen here (write_sql.LOCK_AND_SIGN)
    and return their first uses."""
    if not postbacks:
        return {}
    # Sorted, so that two batches inserting the same signatures wait on them in one order.
    uses = sorted(admission.first_uses(postbacks).items())
    recorded = await conn.fetch(
        LOCK_AND_SIGN,
        _lock_names(postbacks),
        [name[0] for name, _ in uses],
        [name[1] for name, _ in uses],
        [use.values for _, use in uses],
        [use.reversal for _, use in uses],
    )
    new = {(r["provider"], bytes(r["signature"])) for r in recorded if r["provider"] is not None}
    return {name: use for name, use in uses if name in new}


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
    return {(r["provider"], r["link"]): _struct(settlement.Settlement, r) for r in rows}


Offers = dict[tuple[str, str], receipt_offers.ReceiptOffer]


async def _offers(conn: asyncpg.Connection, postbacks: list[Postback]) -> Offers:
    keys = sorted({k for p in postbacks if (k := receipt_offers.offer_key(p)) is not None})
    if not keys:
        return {}
    rows = await conn.fetch(OFFERS, [k[0] for k in keys], [k[1] for k in keys])
    return {
        (r["provider"], r["upload_offer_id"]): _struct(receipt_offers.ReceiptOffer, r) for r in rows
    }


_S = TypeVar("_S", bound=msgspec.Struct)


def _struct(kind: type[_S], row: asyncpg.Record) -> _S:
    """A projection's row as the domain's Struct of the same field names."""
    return kind(**{name: row[name] for name in kind.__struct_fields__})


def _lock_names(postbacks: list[Postback]) -> list[str]:
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
    return sorted(names)


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


def refusal_receipt(sub: Submission) -> Receipt:
    """The answer to a postback refused before it reached the write path."""
    answer = sub.answer(sub.refusal, sub.refusal_detail)
    if sub.refusal_status != answer.status:
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
        [deltas[u].event_count for u in users],
        [last[u] for u in users],
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
    ]
