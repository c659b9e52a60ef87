"""`rebuild`: recompute every projection from the event log, in one transaction."""

from __future__ import annotations

import asyncpg

from .db import translated
from .domain.chain import ChainKey
from .replay import replay

# Every projection, in the order the write path first touches them inside its transaction
# (db/write.py reads settlements, then receipt offers, then writes receipt offers, settlements
# and wallets; a read takes a table lock too). rebuild locks them in this same order: in any
# other, a writer holding one while it waits for the next, and rebuild holding that next one
# while it waits for the first, deadlock. A new projection goes where the write path first
# touches it.
PROJECTIONS = ("settlements", "receipt_offers", "wallets")

_COPY_WALLETS = (
    "user_id",
    "balance",
    "total_credited",
    "total_reversed",
    "event_count",
    "last_position",
)
_COPY_OFFERS = (
    "provider",
    "upload_offer_id",
    "upload_id",
    "offer_id",
    "user_id",
    "status",
    "points_credited",
    "approvals",
    "event_count",
    "last_position",
)
_COPY_SETTLEMENTS = (
    "provider",
    "link",
    "click",
    "credit_key",
    "credit_user",
    "credited",
    "reversal_key",
    "reversal_user",
    "reversed",
    "reversal_whole",
    "last_position",
)


async def rebuild(conn: asyncpg.Connection, key: ChainKey) -> tuple[int, int, int]:
    """Replace the projections with a replay of the log; (events, wallets, offers)."""
    with translated():
        async with conn.transaction():
            # Writers update the projections in the same transaction as their events, so while
            # this lock is held none can commit: the log replayed below is the whole log, and
            # writers blocked meanwhile add their changes on top of the rebuilt rows afterwards.
            # PostgreSQL takes the locks of one LOCK TABLE in the order the tables are listed.
            await conn.execute(f"LOCK TABLE {', '.join(PROJECTIONS)} IN ACCESS EXCLUSIVE MODE")
            await conn.execute(f"TRUNCATE {', '.join(PROJECTIONS)}")
            result = await replay(conn, "rebuild", key)
            await conn.copy_records_to_table(
                "wallets",
                columns=_COPY_WALLETS,
                records=[
                    (
                        user,
                        w.balance,
                        w.total_credited,
                        w.total_reversed,
                        w.event_count,
                        result.wallet_last[user],
                    )
                    for user, w in result.wallets.items()
                ],
            )
            await conn.copy_records_to_table(
                "receipt_offers",
                columns=_COPY_OFFERS,
                records=[
                    (
                        key[0],
                        key[1],
                        o.upload_id,
                        o.offer_id,
                        o.user_id,
                        o.status,
                        o.points_credited,
                        o.approvals,
                        o.event_count,
                        result.offer_last[key],
                    )
                    for key, o in result.offers.items()
                ],
            )
            await conn.copy_records_to_table(
                "settlements",
                columns=_COPY_SETTLEMENTS,
                records=[
                    (
                        key[0],
                        key[1],
                        s.click,
                        s.credit_key,
                        s.credit_user,
                        s.credited,
                        s.reversal_key,
                        s.reversal_user,
                        s.reversed,
                        s.reversal_whole,
                        result.settlement_last[key],
                    )
                    for key, s in result.settlements.items()
                ],
            )
    return result.events, len(result.wallets), len(result.offers)
