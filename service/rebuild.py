"""`rebuild`: recompute every projection from the event log, in one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec

from .db import translated
from .domain.chain import ChainKey
from .replay import replay

# Every projection, in the order the write path first touches them inside its transaction
# (db/write.py reads settlements, then receipt offers, then wallets and holds for spending,
# then writes receipt offers, settlements, wallets and holds; a read takes a table lock too).
# rebuild locks them in this same order: in any other, a writer holding one while it waits for
# the next, and rebuild holding that next one while it waits for the first, deadlock. A new
# projection goes where the write path first touches it.
PROJECTIONS = ("settlements", "receipt_offers", "wallets", "holds")


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
            await _copy(
                conn,
                "wallets",
                ("user_id",),
                result.wallets,
                result.wallet_last,
                result.wallet_at,
            )
            await _copy(
                conn,
                "receipt_offers",
                ("provider", "upload_offer_id"),
                result.offers,
                result.offer_last,
                result.offer_at,
            )
            await _copy(conn, "holds", ("hold_id",), result.holds, result.hold_last, result.hold_at)
            await _copy(
                conn,
                "settlements",
                ("provider", "link"),
                result.settlements,
                result.settlement_last,
                result.settlement_at,
            )
    return result.events, len(result.wallets), len(result.offers)


async def _copy(
    conn: asyncpg.Connection,
    table: str,
    keys: tuple[str, ...],
    states: Mapping[Any, msgspec.Struct],
    last: Mapping[Any, int],
    at: Mapping[Any, dt.datetime],
) -> None:
    """Write one projection: a row per state, its key columns, then its Struct's fields (named
    as the table's columns), then the position of its last event and when that event was
    recorded, which is the `updated_at` the write path gave the row (it sets now(), the time of
    the transaction that recorded the event): a rebuilt row is the row the write path wrote."""
    if not states:
        return
    fields = type(next(iter(states.values()))).__struct_fields__
    await conn.copy_records_to_table(
        table,
        columns=(*keys, *fields, "last_position", "updated_at"),
        records=[
            (
                *(key if isinstance(key, tuple) else (key,)),
                *msgspec.structs.astuple(state),
                last[key],
                at[key],
            )
            for key, state in states.items()
        ],
    )
