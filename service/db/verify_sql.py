"""The statements of the fast `verify` (service/verify.py): the log streamed for its hash chains,
the few events the Python domain fold still replays, and the fold of all the others in SQL,
compared with the stored projections without sending them to Python."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from decimal import Decimal
from typing import Any

import asyncpg

from ..domain import settlement
from ..domain.events import Event
from . import read

# What the chain check reads of every event, in position order: the stored hashes and the
# fields the hash covers, the numeric and the jsonb as the database's own text (the bytes the
# hash covers); `below`: written by a transaction below the boundary given (a checkpoint's
# heads). The hashed bytes are assembled in Python (chain.body), never by the database.
CHAINS = """
SELECT position, user_id, chain, prev_hash, hash, txid < $1::xid8 AS below, provider, key, type,
       amount::text, provider_ref, test, data::text, recorded_at
FROM events ORDER BY position
"""


async def chain_batches(
    conn: asyncpg.Connection, boundary: int | None, batch: int = 50_000
) -> AsyncIterator[list[asyncpg.Record]]:
    """Every event's chain columns (`CHAINS`), in position order, in lists of `batch` rows;
    call inside a transaction that sees a stable log."""
    cursor = await conn.cursor(CHAINS, 0 if boundary is None else boundary)
    while rows := await cursor.fetch(batch):
        yield rows


# A credit or reversal that pairs by its own wall transaction (settlement.link is then
# (provider, provider_ref)) and names no click: a `plain` event. The SQL fold pairs these.
_PLAIN = """type IN ('credited', 'reversed') AND NOT test AND NOT starts_with(key, 'request:')
    AND NOT data ? 'link' AND NOT data ? 'uuid'"""

# Events whose effect the domain fold decides (receipt offers, holds, credits and reversals
# linked by a click or to another transaction): few in a log, replayed in Python.
_SPECIAL = """type IN ('receipt_status_changed', 'hold_placed', 'hold_captured', 'hold_released')
    OR (type IN ('credited', 'reversed') AND NOT test AND NOT starts_with(key, 'request:')
        AND (data ? 'link' OR data ? 'uuid'))"""

_SPECIAL_EVENTS = f"""
SELECT {read.EVENT_COLUMNS} FROM events WHERE {_SPECIAL} ORDER BY position
"""

# Plain wall transactions with more than one credit or more than one reversal (a conflict the
# write path recorded without applying it, or a log from before such events were refused):
# which of them counts depends on their order, left to the domain fold.
_CONTESTED = f"""
SELECT provider, provider_ref FROM events WHERE {_PLAIN}
GROUP BY provider, provider_ref
HAVING count(*) FILTER (WHERE type = 'credited') > 1
    OR count(*) FILTER (WHERE type = 'reversed') > 1
"""

# The plain events of the wall transactions that special events also touch, and of contested
# ones: their pairing is left to the domain fold too.
_LINKED_EVENTS = f"""
SELECT {read.EVENT_COLUMNS} FROM events AS e
WHERE {_PLAIN}
  AND (provider, provider_ref) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY position
"""

# Aggregates over the whole log want memory rather than temporary files (this transaction only).
WORK_MEM = "SET LOCAL work_mem = '512MB'"


async def replayed_events(conn: asyncpg.Connection, contested: bool = False) -> list[Event]:
    """The events the domain fold replays (see `FOLD`), in position order: the special events,
    the plain events of the wall transactions they touch, and with `contested` those of the
    contested ones (found by a pass of their own, needed only when `FOLD` saw some)."""
    await conn.execute(WORK_MEM)
    special = [read.to_event(r) for r in await conn.fetch(_SPECIAL_EVENTS)]
    links = {link for e in special if (link := settlement.link(e)) is not None}
    if contested:
        links |= {(r["provider"], r["provider_ref"]) for r in await conn.fetch(_CONTESTED)}
    if not links:
        return special
    providers, names = _columns(links)
    linked = [read.to_event(r) for r in await conn.fetch(_LINKED_EVENTS, providers, names)]
    return sorted(special + linked, key=lambda e: e.position)


def _columns(pairs: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    ordered = sorted(pairs)
    return [p for p, _ in ordered], [n for _, n in ordered]


# The fold of every other event, in SQL, and its comparison with the stored wallets and
# settlements. Per plain wall transaction (settlement.py), which has at most one credit and one
# reversal (contested ones are left to the domain fold): its reversal counts when it came before
# the credit or names the credit's user (else it was a conflict, recorded but moving nothing).
# The pair moves the credit's user by the credit, less what the reversal takes back (the whole
# credit when the reversal says so, else the lesser of the two) when both name that user.
# Unlinked events: an internal service's credit credits, a debit debits, the rest move nothing.
# Every event counts in its user's event_count. `$1`, `$2` name the transactions left to the
# domain fold; `$3` to `$6` are what the domain fold's events moved per user, added in here.
# A stored wallet without events is compared with an empty one. The answer: how many wallets
# and settlements differ, and how many wallets there are.
FOLD = f"""
WITH left_out AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::text[]) AS l(provider, link)
),
pairs AS (
    SELECT provider, provider_ref AS link,
           max(key) FILTER (WHERE type = 'credited') AS credit_key,
           max(user_id) FILTER (WHERE type = 'credited') AS credit_user,
           max(amount) FILTER (WHERE type = 'credited') AS credited,
           max(position) FILTER (WHERE type = 'credited') AS credit_position,
           max(key) FILTER (WHERE type = 'reversed') AS reversal_key,
           max(user_id) FILTER (WHERE type = 'reversed') AS reversal_user,
           max(amount) FILTER (WHERE type = 'reversed') AS reversed,
           max(position) FILTER (WHERE type = 'reversed') AS reversal_position,
           bool_or(coalesce(data->'reverses_whole_credit' = 'true'::jsonb, false))
               FILTER (WHERE type = 'reversed') AS whole,
           count(*) FILTER (WHERE type = 'credited') > 1
               OR count(*) FILTER (WHERE type = 'reversed') > 1 AS contested
    FROM events AS e
    WHERE {_PLAIN}
      AND NOT EXISTS (SELECT 1 FROM left_out AS l
                      WHERE l.provider = e.provider AND l.link = e.provider_ref)
    GROUP BY provider, provider_ref
),
counted AS (
    SELECT *, reversal_key IS NOT NULL AND (credit_key IS NULL
              OR reversal_position < credit_position OR reversal_user = credit_user) AS counts
    FROM pairs
),
computed AS (
    SELECT provider, link, NULL::text AS click, credit_key,
           coalesce(credit_user, '') AS credit_user, coalesce(credited, 0) AS credited,
           CASE WHEN counts THEN reversal_key END AS reversal_key,
           CASE WHEN counts THEN reversal_user ELSE '' END AS reversal_user,
           CASE WHEN counts THEN reversed ELSE 0 END AS reversed,
           counts AND whole AS reversal_whole,
           CASE WHEN counts AND credit_key IS NOT NULL AND reversal_user = credit_user
                THEN CASE WHEN whole THEN credited ELSE least(reversed, credited) END
           END AS taken
    FROM counted
),
settlement_differences AS (
    SELECT count(*) AS n
    FROM computed AS x
    FULL JOIN (SELECT s.* FROM settlements AS s
               WHERE NOT EXISTS (SELECT 1 FROM left_out AS l
                                 WHERE l.provider = s.provider AND l.link = s.link)) AS s
      USING (provider, link)
    WHERE x.link IS NULL OR s.link IS NULL
       OR (x.click, x.credit_key, x.credit_user, x.credited, x.reversal_key, x.reversal_user,
           x.reversed, x.reversal_whole)
          IS DISTINCT FROM
          (s.click, s.credit_key, s.credit_user, s.credited, s.reversal_key, s.reversal_user,
           s.reversed, s.reversal_whole)
),
paired AS (
    SELECT credit_user AS user_id, sum(credited) AS credited, sum(taken) AS reversed
    FROM computed WHERE credit_key IS NOT NULL GROUP BY credit_user
),
unlinked AS (
    SELECT user_id, count(*) AS event_count,
           sum(amount) FILTER (WHERE type = 'credited' AND NOT test
                                 AND starts_with(key, 'request:')) AS credited,
           sum(amount) FILTER (WHERE type = 'debited' AND NOT test) AS debited
    FROM events GROUP BY user_id
),
replayed AS (
    SELECT * FROM unnest($3::text[], $4::numeric[], $5::numeric[], $6::numeric[])
        AS p(user_id, credited, reversed, debited)
),
expected AS (
    SELECT u.user_id, u.event_count,
           coalesce(u.credited, 0) + coalesce(p.credited, 0) + coalesce(d.credited, 0)
               AS total_credited,
           coalesce(p.reversed, 0) + coalesce(d.reversed, 0) AS total_reversed,
           coalesce(u.debited, 0) + coalesce(d.debited, 0) AS total_debited
    FROM unlinked AS u
    LEFT JOIN paired AS p USING (user_id)
    LEFT JOIN replayed AS d USING (user_id)
),
wallet_differences AS (
    SELECT count(*) AS wallets,
           count(*) FILTER (
               WHERE w.user_id IS NULL
                  OR (coalesce(x.total_credited - x.total_reversed - x.total_debited, 0),
                      coalesce(x.total_credited, 0), coalesce(x.total_reversed, 0),
                      coalesce(x.total_debited, 0), coalesce(x.event_count, 0))
                     IS DISTINCT FROM
                     (w.balance, w.total_credited, w.total_reversed, w.total_debited,
                      w.event_count)
           ) AS n
    FROM expected AS x FULL JOIN wallets AS w USING (user_id)
)
SELECT w.wallets, w.n AS wallet_differences, s.n AS settlement_differences,
       (SELECT count(*) FROM pairs WHERE contested) AS contested
FROM wallet_differences AS w, settlement_differences AS s
"""


async def fold(
    conn: asyncpg.Connection,
    left_out: Iterable[tuple[str, str]],
    moved: Sequence[tuple[str, Decimal, Decimal, Decimal]],
) -> Any:
    """`FOLD`: (wallets, wallet_differences, settlement_differences, contested). `left_out`:
    the wall transactions the domain fold replayed; `moved`: (user, credited, reversed,
    debited) that its events moved."""
    providers, names = _columns(left_out)
    return await conn.fetchrow(
        FOLD,
        providers,
        names,
        [m[0] for m in moved],
        [m[1] for m in moved],
        [m[2] for m in moved],
        [m[3] for m in moved],
    )


async def stored_settlements(
    conn: asyncpg.Connection, links: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Any]:
    """The stored settlements of the wall transactions the domain fold replayed."""
    providers, names = _columns(links)
    rows = await conn.fetch(
        "SELECT provider, link, click, credit_key, credit_user, credited, reversal_key,"
        " reversal_user, reversed, reversal_whole FROM settlements"
        " WHERE (provider, link) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        providers,
        names,
    )
    return {(r["provider"], r["link"]): r for r in rows}
