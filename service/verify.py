"""`verify`: recompute every projection (wallets, receipt offers, settlements) from the event log
and compare it with what the database holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from .db import read, translated
from .domain import receipt_offers, settlement, wallet
from .domain.amounts import format_amount
from .replay import replay

_FIELDS = ("balance", "total_credited", "total_reversed", "event_count")


@dataclass
class Report:
    events: int = 0
    wallets: int = 0
    offers: int = 0
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        counts = f"{self.wallets} wallets and {self.offers} receipt offers"
        if self.ok:
            return f"verify: ok: {counts} agree with {self.events} events"
        return (
            f"verify: FAILED: {len(self.differences)} differences between {counts}"
            f" and {self.events} events"
        )


def compare(computed: Mapping[str, wallet.Wallet], stored: Mapping[str, Any]) -> list[str]:
    """One line per wallet whose projection differs from the fold of its events."""
    differences = []
    for user_id in sorted(computed.keys() | stored.keys()):
        expected, row = computed.get(user_id), stored.get(user_id)
        if row is None:
            differences.append(f"wallet {user_id!r}: missing from the projection")
            continue
        differences += _field_differences(
            f"wallet {user_id!r}", expected or wallet.Wallet(), row, _FIELDS
        )
    return differences


_OFFER_FIELDS = (
    "user_id",
    "upload_id",
    "offer_id",
    "status",
    "points_credited",
    "approvals",
    "event_count",
)


_SETTLEMENT_FIELDS = (
    "credit_key",
    "credit_user",
    "credited",
    "reversal_key",
    "reversal_user",
    "reversed",
)


def compare_offers(
    computed: Mapping[tuple[str, str], receipt_offers.ReceiptOffer],
    stored: Mapping[tuple[str, str], Any],
) -> list[str]:
    """One line per receipt offer whose projection differs from the replay of its events."""
    return _compare_keyed("receipt offer", computed, stored, _OFFER_FIELDS)


def compare_settlements(
    computed: Mapping[tuple[str, str], settlement.Settlement],
    stored: Mapping[tuple[str, str], Any],
) -> list[str]:
    """One line per wall transaction whose settlement differs from the replay of its events."""
    return _compare_keyed("transaction", computed, stored, _SETTLEMENT_FIELDS)


def _compare_keyed(
    kind: str,
    computed: Mapping[tuple[str, str], object],
    stored: Mapping[tuple[str, str], Any],
    fields: tuple[str, ...],
) -> list[str]:
    differences = []
    for key in sorted(computed.keys() | stored.keys()):
        name = f"{kind} {key[0]}/{key[1]!r}"
        expected, row = computed.get(key), stored.get(key)
        if row is None:
            differences.append(f"{name}: missing from the projection")
        elif expected is None:
            differences.append(f"{name}: in the projection but has no events")
        else:
            differences += _field_differences(name, expected, row, fields)
    return differences


def _field_differences(
    name: str, expected: object, row: Mapping[str, Any], fields: tuple[str, ...]
) -> list[str]:
    return [
        f"{name}: {field} is {_show(row[field])} in the projection,"
        f" {_show(getattr(expected, field))} from the events"
        for field in fields
        if getattr(expected, field) != row[field]
    ]


def _show(value: Any) -> str:
    if isinstance(value, Decimal):
        return format_amount(value)
    return repr(value) if isinstance(value, str) else str(value)


async def verify(conn: asyncpg.Connection) -> Report:
    with translated():
        # One snapshot for the log and the projections: writes that commit meanwhile are in
        # none of them, so a busy service cannot make them look different.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            stored = await read.snapshot_wallets(conn)
            stored_offers = await read.snapshot_offers(conn)
            stored_settlements = await read.snapshot_settlements(conn)
            result = await replay(conn, "verify")
    return Report(
        events=result.events,
        wallets=len(result.wallets.keys() | stored.keys()),
        offers=len(result.offers.keys() | stored_offers.keys()),
        differences=[
            *result.chain_breaks,
            *compare(result.wallets, stored),
            *compare_offers(result.offers, stored_offers),
            *compare_settlements(result.settlements, stored_settlements),
        ],
    )
