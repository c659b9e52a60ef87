"""Replay the event log: fold every event into wallets, settlements and receipt offers with the
pure domain code, and check every event's hash and its link to the previous event of its user.
`verify` compares the result with the projections; `rebuild` writes it in their place."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from .db import read
from .domain import receipt_offers, settlement, wallet
from .progress import Progress


@dataclass
class Replay:
    events: int = 0
    wallets: dict[str, wallet.Wallet] = field(default_factory=dict)
    wallet_last: dict[str, int] = field(default_factory=dict)
    offers: dict[tuple[str, str], receipt_offers.ReceiptOffer] = field(default_factory=dict)
    offer_last: dict[tuple[str, str], int] = field(default_factory=dict)
    settlements: dict[tuple[str, str], settlement.Settlement] = field(default_factory=dict)
    settlement_last: dict[tuple[str, str], int] = field(default_factory=dict)
    chain_breaks: list[str] = field(default_factory=list)


async def replay(conn: asyncpg.Connection, label: str) -> Replay:
    """Call inside a transaction that sees a stable log (repeatable read, or writers locked)."""
    result = Replay()
    empty, no_offer = wallet.Wallet(), receipt_offers.ReceiptOffer()
    heads: dict[str, str] = {}  # user -> hash of the user's latest event
    broken: set[str] = set()
    progress = Progress(label, await read.log_size(conn))
    async for event, prev_hash, hash_ok in read.snapshot_events(conn):
        user = event.user_id
        movement = settlement.move(result.settlements, event)
        result.wallets[user] = wallet.apply(result.wallets.get(user, empty), movement)
        result.wallet_last[user] = event.position
        link = settlement.link(event)
        if link is not None and link in result.settlements:
            result.settlement_last[link] = event.position
        offer = receipt_offers.offer_key(event)
        if offer is not None:
            result.offers[offer], _ = receipt_offers.apply(
                result.offers.get(offer, no_offer), event
            )
            result.offer_last[offer] = event.position
        if user not in broken:
            # Only the first break of each user's chain is named: later events chain to it.
            if not event.hash:
                broken.add(user)
                result.chain_breaks.append(
                    f"event {event.position} (user {user!r}): has no hash (written before"
                    " hash chains existed)"
                )
            elif not hash_ok:
                broken.add(user)
                result.chain_breaks.append(
                    f"event {event.position} (user {user!r}): its hash does not match its contents"
                )
            elif prev_hash != heads.get(user):
                broken.add(user)
                result.chain_breaks.append(
                    f"event {event.position} (user {user!r}): does not chain to the previous"
                    " event of its user"
                )
        heads[user] = event.hash
        result.events += 1
        progress.advance()
    progress.done()
    return result
