"""Reads for the API and for `verify`."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from ..domain import holds
from ..domain.events import Event, EventType
from . import Unavailable, struct, translated

EVENT_COLUMNS = (
    "position, provider, key, type, user_id, amount, provider_ref, test, data, recorded_at, hash"
)


def to_event(row: asyncpg.Record) -> Event:
    """An event as a row of `EVENT_COLUMNS` holds it."""
    return Event(
        position=row["position"],
        provider=row["provider"],
        key=row["key"],
        type=EventType(row["type"]),
        user_id=row["user_id"],
        amount=row["amount"],
        provider_ref=row["provider_ref"],
        test=row["test"],
        data=row["data"],
        recorded_at=row["recorded_at"],
        hash="" if row["hash"] is None else bytes(row["hash"]).hex(),  # None: from before chains
    )


# A wallet with the sum of its live holds: those still held whose expiry is after this
# statement's instant (an expired hold stops counting before its release is recorded).
_WALLET = """
WITH now AS MATERIALIZED (SELECT clock_timestamp() AS t)
SELECT w.user_id, w.balance, w.total_credited, w.total_reversed, w.total_debited, w.event_count,
       w.updated_at,
       (SELECT coalesce(sum(h.amount), 0) FROM holds AS h, now
        WHERE h.user_id = w.user_id AND h.status = 'held' AND h.expires_at > now.t) AS held
FROM wallets AS w WHERE w.user_id = $1
"""


async def wallet(pool: asyncpg.Pool, user_id: str) -> asyncpg.Record | None:
    with translated():
        row: asyncpg.Record | None = await pool.fetchrow(_WALLET, user_id)
    return row


async def hold(pool: asyncpg.Pool, hold_id: str) -> tuple[holds.Hold, dt.datetime] | None:
    """A hold, with the database's clock to tell whether it is still live."""
    with translated():
        row: asyncpg.Record | None = await pool.fetchrow(
            "SELECT owner, user_id, amount, status, captured, released, expires_at, reference,"
            " clock_timestamp() AS now FROM holds WHERE hold_id = $1",
            hold_id,
        )
    return None if row is None else (struct(holds.Hold, row), row["now"])


async def expired_holds(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Holds still `held` past their expiry, the earliest first: the expiry sweep's work."""
    with translated():
        rows: list[asyncpg.Record] = await pool.fetch(
            "SELECT hold_id, user_id, owner FROM holds"
            " WHERE status = 'held' AND expires_at <= clock_timestamp()"
            " ORDER BY expires_at LIMIT $1",
            limit,
        )
    return rows


async def negative_wallets(pool: asyncpg.Pool) -> tuple[int, Decimal]:
    """How many wallets are below zero, and the sum of their balances (zero or less)."""
    with translated():
        row = await pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(balance), 0) AS total FROM wallets"
            " WHERE balance < 0"
        )
    assert row is not None
    return row["n"], row["total"]


async def wallet_events(pool: asyncpg.Pool, user_id: str, after: int, limit: int) -> list[Event]:
    # Gap-free by construction: the write path hands out a user's positions under that user's
    # lock, so an event of this user that commits later always has a higher position.
    with translated():
        rows = await pool.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE user_id = $1 AND position > $2"
            " ORDER BY position LIMIT $3",
            user_id,
            after,
            limit,
        )
    return [to_event(r) for r in rows]


# The global feed. Positions come from a sequence taken *before* commit, so "position > last
# seen" skips an event whose transaction commits after a later one (the bug Marten and Eventuous
# shipped). Instead the feed orders by (writing transaction id, position) and serves only rows
# of transactions below the xmin of its own snapshot: every transaction below xmin has ended, so
# no row can ever appear behind a cursor already handed out. The cost is that one long-running
# writer holds the feed back until it ends; the write path's transactions are short.
_FEED = f"""
SELECT {EVENT_COLUMNS}, txid FROM events
WHERE (txid, position) > ($1::xid8, $2::bigint)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY txid, position
LIMIT $3
"""


_FEED_HEAD = """
SELECT txid, position FROM events
WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY txid DESC, position DESC
LIMIT 1
"""


async def feed_head(pool: asyncpg.Pool) -> tuple[int, int] | None:
    """The (txid, position) of the last event the feed may serve now; None while it has none.
    One backward step on the feed's index: what wakes long-polling readers."""
    with translated():
        row = await pool.fetchrow(_FEED_HEAD)
    return None if row is None else (int(row["txid"]), row["position"])


async def feed(pool: asyncpg.Pool, after: tuple[int, int], limit: int) -> list[tuple[Event, int]]:
    """Up to `limit` events after the (txid, position) cursor, each with its txid."""
    with translated():
        rows = await pool.fetch(_FEED, after[0], after[1], limit)
    return [(to_event(r), int(r["txid"])) for r in rows]


_POSTBACK_COLUMNS = (
    "id, received_at, request_id, provider, outcome, http_status, detail, client_ip, method,"
    " params, event_position, user_id, transaction, reason"
)


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which rows of the postback log to read: each field given narrows it. `since` is
    inclusive and `until` exclusive. `before` is where the previous page ended, (received_at,
    id); `before_id` the same given as a postback's id alone."""

    provider: str | None = None
    outcome: str | None = None
    user_id: str | None = None
    transaction: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    before: tuple[dt.datetime, int] | None = None
    before_id: int | None = None


def postbacks_query(where: LogFilter, limit: int) -> tuple[str, list[Any]]:
    """The statement reading a page of the postback log, and its arguments. Only the filters
    given appear in it, so that the planner sees each one and takes the index made for it
    (schema.sql), never a plan built for "any of them or none"."""
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column in ("provider", "outcome", "user_id", "transaction"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"{column} = {arg(value)}::text")
    if not clauses:
        clauses.append("id > 0")  # the predicate of postback_log_recent: see schema.sql
    if where.since is not None:
        clauses.append(f"received_at >= {arg(where.since)}::timestamptz")
    if where.until is not None:
        clauses.append(f"received_at < {arg(where.until)}::timestamptz")
    if where.before is not None:
        at, before = arg(where.before[0]), arg(where.before[1])
        clauses.append(f"(received_at, id) < ({at}::timestamptz, {before}::bigint)")
    elif where.before_id is not None:
        clauses.append(
            "(received_at, id) < (SELECT received_at, id FROM postback_log"
            f" WHERE id = {arg(where.before_id)}::bigint)"
        )
    condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    query = (
        f"SELECT {_POSTBACK_COLUMNS} FROM postback_log{condition}"
        f" ORDER BY received_at DESC, id DESC LIMIT {arg(limit)}::int"
    )
    return query, args


async def postbacks(pool: asyncpg.Pool, where: LogFilter, limit: int) -> list[asyncpg.Record]:
    """A page of the postback log, newest first by (received_at, id) (`postbacks_query`)."""
    query, args = postbacks_query(where, limit)
    with translated():
        rows: list[asyncpg.Record] = await pool.fetch(query, *args)
    return rows


async def postback(pool: asyncpg.Pool, postback_id: int) -> asyncpg.Record | None:
    with translated():
        row: asyncpg.Record | None = await pool.fetchrow(
            f"SELECT {_POSTBACK_COLUMNS} FROM postback_log WHERE id = $1", postback_id
        )
    return row


async def postback_summary(
    pool: asyncpg.Pool, providers: list[str], since: dt.datetime
) -> tuple[list[asyncpg.Record], dict[str, dt.datetime | None]]:
    """Per provider since `since`: how many postbacks had each (outcome, reason); and the time
    of each provider's last postback, however long ago (one step down its index each)."""
    with translated():
        async with pool.acquire() as conn:
            counts: list[asyncpg.Record] = await conn.fetch(
                "SELECT provider, outcome, reason, count(*) AS n FROM postback_log"
                " WHERE received_at >= $1 GROUP BY provider, outcome, reason",
                since,
            )
            last = await conn.fetch(
                "SELECT p AS provider,"
                " (SELECT max(received_at) FROM postback_log WHERE provider = p) AS last"
                " FROM unnest($1::text[]) AS p",
                providers,
            )
    return counts, {r["provider"]: r["last"] for r in last}


async def live_holds(pool: asyncpg.Pool, user_id: str) -> list[asyncpg.Record]:
    """A user's holds that still count in `held`, the soonest to expire first."""
    with translated():
        rows: list[asyncpg.Record] = await pool.fetch(
            "SELECT hold_id, owner, amount, expires_at, reference FROM holds"
            " WHERE user_id = $1 AND status = 'held' AND expires_at > clock_timestamp()"
            " ORDER BY expires_at, hold_id",
            user_id,
        )
    return rows


async def history(pool: asyncpg.Pool, user_id: str, before: int | None, limit: int) -> list[Event]:
    """A user's events newest first, those before position `before` when it is given."""
    with translated():
        rows = await pool.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE user_id = $1"
            " AND position < $2 ORDER BY position DESC LIMIT $3",
            user_id,
            2**63 - 1 if before is None else before,
            limit,
        )
    return [to_event(r) for r in rows]


async def log_size(conn: asyncpg.Connection) -> int:
    """About how many events the log holds (from the index: no count over the table)."""
    size: int | None = await conn.fetchval("SELECT max(position) FROM events")
    return size or 0


@dataclass(frozen=True, slots=True)
class Chained:
    """What `verify` needs to recompute an event's hash, besides the event itself: the stored
    hashes, how the hash was made, the database's own text of the amount and the data (the
    bytes the hash covers), and the writing transaction (for checkpoints)."""

    prev_hash: bytes | None
    hash: bytes | None
    chain: int
    amount_text: str
    data_text: str
    txid: int


async def snapshot_events(
    conn: asyncpg.Connection, chunk: int = 10_000
) -> AsyncIterator[tuple[Event, Chained]]:
    """Every event in position order; call inside a transaction that sees a stable log."""
    query = (
        f"SELECT {EVENT_COLUMNS}, prev_hash, chain, amount::text AS amount_text,"
        " data::text AS data_text, txid FROM events ORDER BY position"
    )
    async for row in conn.cursor(query, prefetch=chunk):
        prev, stored = row["prev_hash"], row["hash"]
        yield (
            to_event(row),
            Chained(
                prev_hash=None if prev is None else bytes(prev),
                hash=None if stored is None else bytes(stored),
                chain=row["chain"],
                amount_text=row["amount_text"],
                data_text=row["data_text"],
                txid=int(row["txid"]),
            ),
        )


async def require_schema(conn: asyncpg.Connection) -> None:
    """Refuse, in one line, a database the schema was never applied to (verify does not)."""
    if await conn.fetchval("SELECT to_regclass('events')") is None:
        raise Unavailable("this database has no events table: run migrate first")


async def snapshot_boundary(conn: asyncpg.Connection) -> int:
    """The xmin of this transaction's snapshot: every transaction with a smaller id has ended,
    and none can start with one."""
    xmin: int = int(await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())"))
    return xmin


async def snapshot_wallets(conn: asyncpg.Connection) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT user_id, balance, total_credited, total_reversed, total_debited, event_count"
        " FROM wallets"
    )
    return {r["user_id"]: r for r in rows}


async def receipt_offer(
    pool: asyncpg.Pool, provider: str, upload_offer_id: str, after: int, limit: int
) -> tuple[asyncpg.Record | None, list[Event]]:
    """The offer's row and up to `limit` of its events after position `after`, oldest first,
    from one snapshot. Gap-free like a wallet's events: the write path hands out an offer's
    positions while holding that offer's lock."""
    with translated():
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            row: asyncpg.Record | None = await conn.fetchrow(
                "SELECT provider, upload_offer_id, upload_id, offer_id, user_id, status,"
                " points_credited, approvals, event_count, updated_at FROM receipt_offers"
                " WHERE provider = $1 AND upload_offer_id = $2",
                provider,
                upload_offer_id,
            )
            rows = await conn.fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE provider = $1"
                " AND data->>'upload_offer_id' = $2 AND type = 'receipt_status_changed'"
                " AND position > $3 ORDER BY position LIMIT $4",
                provider,
                upload_offer_id,
                after,
                limit,
            )
    return row, [to_event(r) for r in rows]


async def snapshot_offers(conn: asyncpg.Connection) -> dict[tuple[str, str], Any]:
    rows = await conn.fetch(
        "SELECT provider, upload_offer_id, upload_id, offer_id, user_id, status, points_credited,"
        " approvals, event_count FROM receipt_offers"
    )
    return {(r["provider"], r["upload_offer_id"]): r for r in rows}


async def snapshot_settlements(conn: asyncpg.Connection) -> dict[tuple[str, str], Any]:
    rows = await conn.fetch(
        "SELECT provider, link, click, credit_key, credit_user, credited, reversal_key,"
        " reversal_user, reversed, reversal_whole FROM settlements"
    )
    return {(r["provider"], r["link"]): r for r in rows}


async def snapshot_holds(conn: asyncpg.Connection) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT hold_id, owner, user_id, amount, status, captured, released, expires_at,"
        " reference FROM holds"
    )
    return {r["hold_id"]: r for r in rows}
