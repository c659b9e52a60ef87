"""The write path's SQL (`write.py` runs it): every statement, with why it locks and orders
as it does."""

from __future__ import annotations

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
SETTLEMENTS = """
SELECT s.provider, s.link, s.click, s.credit_key, s.credit_user, s.credited, s.reversal_key,
       s.reversal_user, s.reversed, s.reversal_whole
FROM settlements AS s
WHERE (s.provider, s.link) IN (SELECT * FROM unnest($1::text[], $2::text[]))
   OR (s.click IS NOT NULL
       AND (s.provider, s.click) IN (SELECT * FROM unnest($3::text[], $4::text[])))
"""

# The unique constraint decides what is new; rows it skips are looked up afterwards. Rows arrive
# sorted by key, so two batches sharing keys wait on them in the same order.
INSERT = """
INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test, data)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[],
                     $6::text[], $7::bool[], $8::text[]::jsonb[])
ON CONFLICT (provider, key) DO NOTHING
RETURNING provider, key, position
"""

EXISTING_EVENTS = """
SELECT e.provider, e.key, e.type, e.user_id, e.amount, e.test, e.data->>'status' AS status,
       e.data->>'upload_offer_id' AS offer, e.position
FROM events AS e
JOIN unnest($1::text[], $2::text[]) AS k(provider, key) ON e.provider = k.provider AND e.key = k.key
"""

# Sorted by user so that concurrent batches lock wallet rows in one order (no deadlock).
WALLETS = """
INSERT INTO wallets AS w (user_id, balance, total_credited, total_reversed, event_count,
                          last_position, updated_at)
SELECT u, b, c, r, n, p, now()
FROM unnest(${0}::text[], ${1}::numeric[], ${2}::numeric[], ${3}::numeric[], ${4}::bigint[],
            ${5}::bigint[]) AS t(u, b, c, r, n, p)
ORDER BY u
ON CONFLICT (user_id) DO UPDATE SET
    balance = w.balance + EXCLUDED.balance,
    total_credited = w.total_credited + EXCLUDED.total_credited,
    total_reversed = w.total_reversed + EXCLUDED.total_reversed,
    event_count = w.event_count + EXCLUDED.event_count,
    last_position = greatest(w.last_position, EXCLUDED.last_position),
    updated_at = now()
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
                          params, event_position)
SELECT r, p, o, s, d, ip, m, pa::jsonb, ep
FROM unnest(${0}::text[], ${1}::text[], ${2}::text[], ${3}::int2[], ${4}::text[], ${5}::text[],
            ${6}::text[], ${7}::text[], ${8}::int8[]) AS t(r, p, o, s, d, ip, m, pa, ep)
"""
INSERT_LOG = LOG.format(*range(1, 10))
# Settlements, wallets and the log in one round trip: data-modifying WITH clauses all run. A
# batch that settles nothing leaves the settlements table alone (even an insert of no rows
# locks it), so that every transaction touches the projections in one order: settlements,
# receipt offers, wallets (rebuild locks them in that order too).
WALLETS_AND_LOG = f"WITH changed AS ({WALLETS.format(*range(1, 7))}) {LOG.format(*range(7, 16))}"
PROJECT_AND_LOG = (
    f"WITH settled AS ({SETTLE.format(*range(1, 12))}),"
    f" changed AS ({WALLETS.format(*range(12, 18))}),"
    f" logged AS ({LOG.format(*range(18, 27))})"
    " SELECT count(*) FROM settled"
)
