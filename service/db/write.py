"""The one write path: `append(pool, batch)` records a batch of postbacks in one transaction.

For every submission it decides the outcome (new event, duplicate, conflict, or the refusal the
handler already found), appends the new events, folds them into the wallet projection, and writes
the postback log, all in the same transaction: an answer is only given for what has committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from .. import metrics
from ..domain import receipt_offers, wallet
from ..domain.events import Outcome, Postback
from ..logs import log
from ..providers.base import Answer
from . import Unavailable, translated

Key = tuple[str, str]

# Why the advisory locks come first: holding the lock of every user and receipt offer a batch
# touches *before* its events get their positions means that, per user and per offer, positions
# are handed out in commit order. So a reader paging one wallet's events by position never skips
# one that commits late, and the order in which the receipt state machine applied an offer's
# events is its position order, which `verify` replays. The locks are taken in sorted order, so
# two batches can never wait on each other in a cycle. They are taken by the same statement that
# inserts, to save a round trip: the uncorrelated subquery on `locked` is evaluated once, before
# the first row is inserted, so every lock is held before any position is handed out.
#
# The unique constraint decides what is new; rows it skips are looked up afterwards. Rows arrive
# sorted by key, so two batches sharing keys wait on them in the same order.
_LOCK_AND_INSERT = """
WITH locked AS (
    SELECT count(pg_advisory_xact_lock(h)) AS n
    FROM (SELECT DISTINCT hashtextextended(n, 0) AS h FROM unnest($9::text[]) AS n
          ORDER BY h) AS l
)
INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test, data)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[],
                     $6::text[], $7::bool[], $8::text[]::jsonb[])
WHERE (SELECT n FROM locked) >= 0
ON CONFLICT (provider, key) DO NOTHING
RETURNING provider, key, position
"""

_EXISTING_EVENTS = """
SELECT e.provider, e.key, e.type, e.user_id, e.amount, e.test, e.data->>'status' AS status,
       e.data->>'upload_offer_id' AS offer, e.position
FROM events AS e
JOIN unnest($1::text[], $2::text[]) AS k(provider, key) ON e.provider = k.provider AND e.key = k.key
"""

# Sorted by user so that concurrent batches lock wallet rows in one order (no deadlock).
_WALLETS = """
INSERT INTO wallets AS w (user_id, balance, total_credited, total_reversed, event_count,
                          last_position, updated_at)
SELECT u, b, c, r, n, p, now()
FROM unnest($1::text[], $2::numeric[], $3::numeric[], $4::numeric[], $5::bigint[], $6::bigint[])
     AS t(u, b, c, r, n, p)
ORDER BY u
ON CONFLICT (user_id) DO UPDATE SET
    balance = w.balance + EXCLUDED.balance,
    total_credited = w.total_credited + EXCLUDED.total_credited,
    total_reversed = w.total_reversed + EXCLUDED.total_reversed,
    event_count = w.event_count + EXCLUDED.event_count,
    last_position = greatest(w.last_position, EXCLUDED.last_position),
    updated_at = now()
"""

_OFFERS = """
SELECT o.provider, o.upload_offer_id, o.upload_id, o.offer_id, o.user_id, o.status,
       o.points_credited, o.approvals, o.event_count
FROM receipt_offers AS o
JOIN unnest($1::text[], $2::text[]) AS k(provider, id)
  ON o.provider = k.provider AND o.upload_offer_id = k.id
"""

_UPSERT_OFFERS = """
INSERT INTO receipt_offers AS o (provider, upload_offer_id, upload_id, offer_id, user_id, status,
                                 points_credited, approvals, event_count, last_position,
                                 updated_at)
SELECT *, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::numeric[], $8::int[], $9::bigint[], $10::bigint[])
ON CONFLICT (provider, upload_offer_id) DO UPDATE SET
    upload_id = EXCLUDED.upload_id,
    offer_id = EXCLUDED.offer_id,
    user_id = EXCLUDED.user_id,
    status = EXCLUDED.status,
    points_credited = EXCLUDED.points_credited,
    approvals = EXCLUDED.approvals,
    event_count = EXCLUDED.event_count,
    last_position = EXCLUDED.last_position,
    updated_at = now()
"""

_LOG = """
INSERT INTO postback_log (request_id, provider, outcome, http_status, detail, client_ip, method,
                          params, event_position)
SELECT r, p, o, s, d, ip, m, pa::jsonb, ep
FROM unnest(${0}::text[], ${1}::text[], ${2}::text[], ${3}::int2[], ${4}::text[], ${5}::text[],
            ${6}::text[], ${7}::text[], ${8}::int8[]) AS t(r, p, o, s, d, ip, m, pa, ep)
"""
_INSERT_LOG = _LOG.format(*range(1, 10))
# The wallets and the log in one round trip: data-modifying WITH clauses all run.
_WALLETS_AND_LOG = f"WITH changed AS ({_WALLETS}) {_LOG.format(*range(7, 16))}"

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
        except Unavailable as exc:
            retriable = isinstance(exc.__cause__, asyncpg.TransactionRollbackError)
            if not retriable or attempt == _ATTEMPTS:
                raise
            log.warning("write transaction rolled back, retrying", attempt=attempt, error=str(exc))
    for postback in new:
        metrics.EVENTS.labels(type=postback.type.value).inc()
    return results


async def _append(
    conn: asyncpg.Connection, batch: Sequence[Submission]
) -> tuple[list[Receipt], list[Postback]]:
    # The first copy of each key in the batch is the candidate; later copies are judged against
    # whatever the log holds for that key, exactly as a copy in a later batch would be.
    candidates: dict[Key, Postback] = {}
    for sub in batch:
        if sub.postback is not None:
            candidates.setdefault((sub.postback.provider, sub.postback.key), sub.postback)
    ordered = [candidates[k] for k in sorted(candidates)]

    inserted: dict[Key, int] = {}
    stored: dict[Key, _Stored] = {}
    if ordered:
        rows = await conn.fetch(_LOCK_AND_INSERT, *_event_columns(ordered), _lock_names(ordered))
        inserted = {(r["provider"], r["key"]): r["position"] for r in rows}
        for key, position in inserted.items():
            stored[key] = _Stored(_fingerprint(candidates[key]), position)
        skipped = [k for k in candidates if k not in inserted]
        if skipped:
            rows = await conn.fetch(
                _EXISTING_EVENTS, [k[0] for k in skipped], [k[1] for k in skipped]
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

    # In position order: the order the receipt state machine must see each offer's events in.
    new = [candidates[k] for k in sorted(inserted, key=inserted.__getitem__)]
    decided = await _apply_receipts(conn, new, inserted)
    results: list[Receipt] = []
    fresh: set[Key] = set()
    for sub in batch:
        results.append(_judge(sub, inserted, stored, decided, fresh))

    log = _log_columns(batch, results)
    if new:
        await conn.execute(_WALLETS_AND_LOG, *_wallet_columns(new, inserted), *log)
    else:
        await conn.execute(_INSERT_LOG, *log)
    return results, new


def _lock_names(postbacks: list[Postback]) -> list[str]:
    names = {f"user:{p.user_id}" for p in postbacks}
    for p in postbacks:
        offer = receipt_offers.offer_key(p)
        if offer is not None:
            names.add(f"offer:{offer[0]}:{offer[1]}")  # provider names hold no ':'
    return sorted(names)


async def _apply_receipts(
    conn: asyncpg.Connection, new: list[Postback], inserted: dict[Key, int]
) -> dict[Key, Outcome]:
    """Fold the new receipt status events into their offers; the outcome of each."""
    events = [p for p in new if receipt_offers.offer_key(p) is not None]
    if not events:
        return {}
    offers = sorted({k for p in events if (k := receipt_offers.offer_key(p)) is not None})
    rows = await conn.fetch(_OFFERS, [k[0] for k in offers], [k[1] for k in offers])
    states = {
        (r["provider"], r["upload_offer_id"]): receipt_offers.ReceiptOffer(
            user_id=r["user_id"],
            upload_id=r["upload_id"],
            offer_id=r["offer_id"],
            status=r["status"],
            points_credited=r["points_credited"],
            approvals=r["approvals"],
            event_count=r["event_count"],
        )
        for r in rows
    }
    decided: dict[Key, Outcome] = {}
    last: dict[tuple[str, str], int] = {}
    for p in events:
        offer = receipt_offers.offer_key(p)
        assert offer is not None
        states[offer], decided[(p.provider, p.key)] = receipt_offers.apply(
            states.get(offer, receipt_offers.ReceiptOffer()), p
        )
        last[offer] = inserted[(p.provider, p.key)]
    changed = sorted(last)
    await conn.execute(
        _UPSERT_OFFERS,
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


def _judge(
    sub: Submission,
    inserted: dict[Key, int],
    stored: dict[Key, _Stored],
    decided: dict[Key, Outcome],
    fresh: set[Key],
) -> Receipt:
    p = sub.postback
    if p is None:
        answer = sub.answer(sub.refusal, sub.refusal_detail)
        if sub.refusal_status != answer.status:
            answer = Answer(sub.refusal_status, sub.refusal_detail)
        return Receipt(sub.refusal, sub.refusal_detail, answer, None)
    key = (p.provider, p.key)
    s = stored[key]
    if key in inserted and key not in fresh:
        fresh.add(key)
        outcome = decided.get(key) or wallet.outcome(p)
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


def _wallet_columns(new: list[Postback], inserted: dict[Key, int]) -> list[list[Any]]:
    # The wallet fold is a sum, so folding a batch's events from zero gives the change to add.
    deltas: dict[str, wallet.Wallet] = {}
    last: dict[str, int] = {}
    for p in new:
        deltas[p.user_id] = wallet.apply(deltas.get(p.user_id, wallet.Wallet()), p)
        last[p.user_id] = max(last.get(p.user_id, 0), inserted[(p.provider, p.key)])
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
