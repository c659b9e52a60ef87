"""The write path's SQL (`write.py` runs it): every statement, with why it locks and orders
as it does."""

from __future__ import annotations

import functools

# Why the advisory locks come first: holding the lock of every user, receipt offer and wall
# transaction (link) a batch touches *before* its events get their positions means that, per
# user and per offer, positions are handed out in commit order. So a reader paging one wallet's
# events by position never skips one that commits late, and the order in which the receipt state
# machine applied an offer's events is its position order, which `verify` replays. It also means
# that the projections read after the locks (offers, settlements) cannot change until commit, so
# what is decided from them holds. The locks are taken in sorted order, so two batches can never
# wait on each other in a cycle.
#
# The first statement takes the locks and records the batch's signatures (digests only) in one
# round trip. The `locked` CTE is referenced by the insert, so every lock is held before the
# first signature row goes in, and by the last UNION branch, so the locks are taken even when
# the batch has no signature at all. A signature already seen is left as it is (ON CONFLICT):
# it is compared afterwards with what this postback says it signs.
LOCK_AND_SIGN = """
WITH locked AS (
    SELECT count(pg_advisory_xact_lock(h)) AS n
    FROM (SELECT DISTINCT hashtextextended(n, 0) AS h FROM unnest($1::text[]) AS n
          ORDER BY h) AS l
), signed AS (
    INSERT INTO signatures (provider, signature, signed, reversal)
    SELECT * FROM unnest($2::text[], $3::bytea[], $4::bytea[], $5::bool[])
    WHERE (SELECT n FROM locked) >= 0
    ON CONFLICT (provider, signature) DO NOTHING
    RETURNING provider, signature
)
SELECT provider, signature FROM signed
UNION ALL SELECT NULL, NULL FROM locked
"""

SIGNATURES = """
SELECT s.provider, s.signature, s.signed, s.reversal
FROM signatures AS s
JOIN unnest($1::text[], $2::bytea[]) AS k(provider, signature)
  ON s.provider = k.provider AND s.signature = k.signature
"""

# The batch's wall transactions, by link, and those of the clicks its postbacks name (a reversal
# sent under a transaction id of its own finds its credit by the click, and the other way round).
# Two lookups, one per index (the primary key and settlements_click), joined by UNION: written as
# one scan with `link IN (...) OR click IN (...)`, the planner can use neither index and reads
# the whole table, which grows with every wall transaction ever credited.
SETTLEMENTS = """
SELECT s.provider, s.link, s.click, s.credit_key, s.credit_user, s.credited, s.reversal_key,
       s.reversal_user, s.reversed, s.reversal_whole
FROM settlements AS s
JOIN unnest($1::text[], $2::text[]) AS k(provider, link)
  ON s.provider = k.provider AND s.link = k.link
UNION
SELECT s.provider, s.link, s.click, s.credit_key, s.credit_user, s.credited, s.reversal_key,
       s.reversal_user, s.reversed, s.reversal_whole
FROM settlements AS s
JOIN unnest($3::text[], $4::text[]) AS c(provider, click)
  ON s.provider = c.provider AND s.click = c.click
WHERE s.click IS NOT NULL
"""

# The unique constraint decides what is new; rows it skips are looked up afterwards. Positions
# are handed out in the rows' order (write.py: the order things were decided).
INSERT = """
INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test, data)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[],
                     $6::text[], $7::bool[], $8::text[]::jsonb[])
ON CONFLICT (provider, key) DO NOTHING
RETURNING provider, key, position, recorded_at, hash
"""

EXISTING_EVENTS = """
SELECT e.provider, e.key, e.type, e.user_id, e.amount, e.test, e.data->>'status' AS status,
       e.data->>'upload_offer_id' AS offer, e.position
FROM events AS e
JOIN unnest($1::text[], $2::text[]) AS k(provider, key) ON e.provider = k.provider AND e.key = k.key
"""

# Sorted by user so that concurrent batches lock wallet rows in one order (no deadlock).
WALLETS = """
INSERT INTO wallets AS w (user_id, balance, total_credited, total_reversed, total_debited,
                          event_count, last_position, updated_at)
SELECT u, b, c, r, d, n, p, now()
FROM unnest(${0}::text[], ${1}::numeric[], ${2}::numeric[], ${3}::numeric[], ${4}::numeric[],
            ${5}::bigint[], ${6}::bigint[]) AS t(u, b, c, r, d, n, p)
ORDER BY u
ON CONFLICT (user_id) DO UPDATE SET
    balance = w.balance + EXCLUDED.balance,
    total_credited = w.total_credited + EXCLUDED.total_credited,
    total_reversed = w.total_reversed + EXCLUDED.total_reversed,
    total_debited = w.total_debited + EXCLUDED.total_debited,
    event_count = w.event_count + EXCLUDED.event_count,
    last_position = greatest(w.last_position, EXCLUDED.last_position),
    updated_at = now()
"""

# Spending (domain/spending.py). Under the locks: each user's wallet and the sum of its live
# holds, at one instant of the database's clock (`now`, read once), which also decides which
# holds are live and when new ones expire. Wallets are read before holds: the order in which
# every transaction first touches the projections (rebuild.PROJECTIONS).
SPEND_STATE = """
WITH now AS MATERIALIZED (SELECT clock_timestamp() AS t)
SELECT u.user_id, now.t AS now,
       coalesce(w.balance, 0) AS balance,
       coalesce(w.total_credited, 0) AS total_credited,
       coalesce(w.total_reversed, 0) AS total_reversed,
       coalesce(w.total_debited, 0) AS total_debited,
       coalesce(w.event_count, 0) AS event_count,
       (SELECT coalesce(sum(h.amount), 0) FROM holds AS h
        WHERE h.user_id = u.user_id AND h.status = 'held' AND h.expires_at > now.t) AS held
FROM unnest($1::text[]) AS u(user_id)
CROSS JOIN now
LEFT JOIN wallets AS w ON w.user_id = u.user_id
"""

HOLDS = """
SELECT hold_id, owner, user_id, amount, status, captured, released, expires_at, reference
FROM holds WHERE hold_id = ANY($1::text[])
"""

# Each idempotency key's stored answer, or whether its event exists though the answer expired.
ANSWERS = """
SELECT k.api_key, k.key, i.fingerprint, i.status, i.body,
       EXISTS (SELECT 1 FROM events AS e
               WHERE e.provider = k.api_key AND e.key = 'request:' || k.key) AS used
FROM unnest($1::text[], $2::text[]) AS k(api_key, key)
LEFT JOIN idempotency_keys AS i ON i.api_key = k.api_key AND i.key = k.key
"""

# Holds are decided under their user's lock, so the row read is the row replaced.
UPSERT_HOLDS = """
INSERT INTO holds AS h (hold_id, owner, user_id, amount, status, captured, released, expires_at,
                        reference, last_position, updated_at)
SELECT *, now()
FROM unnest(${0}::text[], ${1}::text[], ${2}::text[], ${3}::numeric[], ${4}::text[],
            ${5}::numeric[], ${6}::numeric[], ${7}::timestamptz[], ${8}::text[], ${9}::bigint[])
ON CONFLICT (hold_id) DO UPDATE SET
    status = EXCLUDED.status,
    captured = EXCLUDED.captured,
    released = EXCLUDED.released,
    last_position = EXCLUDED.last_position,
    updated_at = now()
"""

# The first answer to each idempotency key, given again to its repeats. No ON CONFLICT: the
# key's lock is held, so a row already there would be a bug, and it aborts the transaction.
STORE_ANSWERS = """
INSERT INTO idempotency_keys (api_key, key, fingerprint, status, body)
SELECT * FROM unnest(${0}::text[], ${1}::text[], ${2}::bytea[], ${3}::int2[], ${4}::bytea[])
"""

OFFERS = """
SELECT o.provider, o.upload_offer_id, o.upload_id, o.offer_id, o.user_id, o.status,
       o.points_credited, o.approvals, o.event_count
FROM receipt_offers AS o
JOIN unnest($1::text[], $2::text[]) AS k(provider, id)
  ON o.provider = k.provider AND o.upload_offer_id = k.id
"""

UPSERT_OFFERS = """
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

# A wall transaction's credit and reversal (domain/settlement.py), written whole. The write path
# decided from the row it read under the transaction's lock; a reversal linked by its click
# holds the click's lock instead, so as a guard every slot it fills must still be empty (or
# already its own): a row changed meanwhile is not updated, `append` sees fewer rows than it
# wrote, and the whole transaction is retried on fresh reads.
SETTLE = """
INSERT INTO settlements AS s (provider, link, click, credit_key, credit_user, credited,
                              reversal_key, reversal_user, reversed, reversal_whole,
                              last_position, updated_at)
SELECT *, now()
FROM unnest(${0}::text[], ${1}::text[], ${2}::text[], ${3}::text[], ${4}::text[],
            ${5}::numeric[], ${6}::text[], ${7}::text[], ${8}::numeric[], ${9}::bool[],
            ${10}::bigint[])
ON CONFLICT (provider, link) DO UPDATE SET
    click = EXCLUDED.click,
    credit_key = EXCLUDED.credit_key,
    credit_user = EXCLUDED.credit_user,
    credited = EXCLUDED.credited,
    reversal_key = EXCLUDED.reversal_key,
    reversal_user = EXCLUDED.reversal_user,
    reversed = EXCLUDED.reversed,
    reversal_whole = EXCLUDED.reversal_whole,
    last_position = EXCLUDED.last_position,
    updated_at = now()
WHERE (s.credit_key IS NULL OR s.credit_key = EXCLUDED.credit_key)
  AND (s.reversal_key IS NULL OR s.reversal_key = EXCLUDED.reversal_key)
RETURNING 1
"""

LOG = """
INSERT INTO postback_log (request_id, provider, outcome, http_status, detail, client_ip, method,
                          params, event_position, user_id, transaction, reason)
SELECT r, p, o, s, d, ip, m, pa::jsonb, ep, u, tr, re
FROM unnest(${0}::text[], ${1}::text[], ${2}::text[], ${3}::int2[], ${4}::text[], ${5}::text[],
            ${6}::text[], ${7}::text[], ${8}::int8[], ${9}::text[], ${10}::text[], ${11}::text[])
     AS t(r, p, o, s, d, ip, m, pa, ep, u, tr, re)
"""


@functools.cache
def project(*, settle: bool, wallets: bool, holds: bool, answers: bool, log: bool) -> str:
    """The batch's last statement: its settlements, wallets, holds, stored answers and postback
    log in one round trip (data-modifying WITH clauses all run), taking their parameters in
    that order. It answers how many settlements it wrote. A part with nothing to write is left
    out: even an insert of no rows locks its table, and every transaction must touch the
    projections in one order (settlements, receipt offers, wallets, holds: rebuild locks them in
    that order too)."""
    parts = [
        ("settled", SETTLE, 11, settle),
        ("changed", WALLETS, 7, wallets),
        ("held", UPSERT_HOLDS, 10, holds),
        ("answered", STORE_ANSWERS, 5, answers),
        ("logged", LOG, 12, log),
    ]
    clauses, first = [], 1
    for name, template, count, wanted in parts:
        if wanted:
            clauses.append(f"{name} AS ({template.format(*range(first, first + count))})")
            first += count
    result = "SELECT count(*) FROM settled" if settle else "SELECT 0"
    return f"WITH {', '.join(clauses)} {result}" if clauses else result


# Idempotency answers past their retention, a bounded number at a time (the upkeep loop comes
# back for more), so that no delete holds many rows' locks for long.
PRUNE_ANSWERS = """
DELETE FROM idempotency_keys
WHERE ctid = ANY (ARRAY(SELECT ctid FROM idempotency_keys
                        WHERE created_at < now() - make_interval(secs => $1)
                        LIMIT $2))
"""
