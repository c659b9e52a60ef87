"""Replay the event log: fold every event into wallets, settlements, receipt offers and holds
with the pure domain code, and check every event's hash (recomputed here, with the chain key)
and its link to the previous event of its user. `verify` compares the result with the
projections; `rebuild` writes it in their place; checkpoints take the chain heads it collects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from .db import read
from .domain import chain, holds, receipt_offers, settlement, wallet
from .domain.chain import ChainKey
from .domain.events import Event
from .progress import Progress


@dataclass
class Replay:
    events: int = 0
    unkeyed: int = 0  # events hashed before the chain key existed (chain 0)
    wallets: dict[str, wallet.Wallet] = field(default_factory=dict)
    wallet_last: dict[str, int] = field(default_factory=dict)
    offers: dict[tuple[str, str], receipt_offers.ReceiptOffer] = field(default_factory=dict)
    offer_last: dict[tuple[str, str], int] = field(default_factory=dict)
    settlements: dict[tuple[str, str], settlement.Settlement] = field(default_factory=dict)
    settlement_last: dict[tuple[str, str], int] = field(default_factory=dict)
    holds: dict[str, holds.Hold] = field(default_factory=dict)
    hold_last: dict[str, int] = field(default_factory=dict)
    # When each row's last event was recorded: the `updated_at` the write path gave the row,
    # which sets it to now(), the time of the transaction that also recorded that event.
    wallet_at: dict[str, dt.datetime] = field(default_factory=dict)
    offer_at: dict[tuple[str, str], dt.datetime] = field(default_factory=dict)
    settlement_at: dict[tuple[str, str], dt.datetime] = field(default_factory=dict)
    hold_at: dict[str, dt.datetime] = field(default_factory=dict)
    chain_breaks: list[str] = field(default_factory=list)
    # With a boundary: each user's chain head (hex) among the events of transactions below it.
    heads: dict[str, str] = field(default_factory=dict)
    head_events: int = 0


def _body(event: Event, c: read.Chained) -> bytes:
    """The event's hashed bytes without the previous hash."""
    return chain.message(
        None,
        position=event.position,
        provider=event.provider,
        key=event.key,
        type=event.type.value,
        user_id=event.user_id,
        amount_text=c.amount_text,
        provider_ref=event.provider_ref,
        test=event.test,
        data_text=c.data_text,
        recorded_at=event.recorded_at,
    )


async def replay(
    conn: asyncpg.Connection, label: str, key: ChainKey, boundary: int | None = None
) -> Replay:
    """Call inside a transaction that sees a stable log (repeatable read, or writers locked).
    With `boundary`, also collect the chain heads of the events of transactions below it."""
    result = Replay()
    heads: dict[str, bytes | None] = {}  # user -> hash of the user's latest event
    broken: set[str] = set()
    first_keyed: int | None = None
    progress = Progress(label, await read.log_size(conn))
    async for event, c in read.snapshot_events(conn):
        user = event.user_id
        _fold(result, event)
        if c.chain == chain.UNKEYED:
            result.unkeyed += 1
        elif first_keyed is None:
            first_keyed = event.position
        if user not in broken:
            # Only the first break of each user's chain is named: later events chain to it.
            problem = chain.problem(
                c.chain, c.prev_hash, c.hash, _body(event, c), key, heads.get(user), first_keyed
            )
            if problem:
                broken.add(user)
                result.chain_breaks.append(f"event {event.position} (user {user!r}): {problem}")
        heads[user] = c.hash
        if boundary is not None and c.txid < boundary:
            result.heads[user] = c.hash.hex() if c.hash else ""
            result.head_events += 1
        result.events += 1
        progress.advance()
    progress.done()
    return result


def fold(events: Iterable[Event]) -> Replay:
    """The projections of `events` alone (in position order), without their hashes: `verify`
    folds here the events whose effect only the domain code decides, and the rest in SQL."""
    result = Replay()
    for event in events:
        _fold(result, event)
        result.events += 1
    return result


_EMPTY, _NO_OFFER = wallet.Wallet(), receipt_offers.ReceiptOffer()


def _fold(result: Replay, event: Event) -> None:
    """Fold one more event into every projection of `result`."""
    user = event.user_id
    movement = settlement.move(result.settlements, event)
    result.wallets[user] = wallet.apply(result.wallets.get(user, _EMPTY), movement)
    result.wallet_last[user] = event.position
    result.wallet_at[user] = event.recorded_at
    link = settlement.link(event)
    if link is not None and link in result.settlements:
        result.settlement_last[link] = event.position
        result.settlement_at[link] = event.recorded_at
    offer = receipt_offers.offer_key(event)
    if offer is not None:
        result.offers[offer], _ = receipt_offers.apply(
            result.offers.get(offer, _NO_OFFER), event, movement
        )
        result.offer_last[offer] = event.position
        result.offer_at[offer] = event.recorded_at
    hold = holds.hold_id(event)
    if hold is not None:
        result.holds[hold] = holds.apply(result.holds.get(hold), event)
        result.hold_last[hold] = event.position
        result.hold_at[hold] = event.recorded_at
