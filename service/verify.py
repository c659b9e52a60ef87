"""`verify`: recompute every wallet from the event log and compare it with the projection."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .db import read, translated
from .domain import wallet
from .domain.amounts import format_amount

_FIELDS = ("balance", "total_credited", "total_reversed", "event_count")


@dataclass
class Report:
    events: int = 0
    wallets: int = 0
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        if self.ok:
            return f"verify: ok: {self.wallets} wallets agree with {self.events} events"
        return (
            f"verify: FAILED: {len(self.differences)} differences between {self.wallets} wallets"
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
        if expected is None:
            expected = wallet.Wallet()
        for name in _FIELDS:
            want, have = getattr(expected, name), row[name]
            if want != have:
                differences.append(
                    f"wallet {user_id!r}: {name} is {_show(have)} in the projection,"
                    f" {_show(want)} from the events"
                )
    return differences


def _show(value: Any) -> str:
    return format_amount(value) if not isinstance(value, int) else str(value)


async def verify(conn: asyncpg.Connection) -> Report:
    report = Report()
    computed: dict[str, wallet.Wallet] = {}
    empty = wallet.Wallet()
    with translated():
        # One snapshot for the log and the projection: writes that commit meanwhile are in
        # neither, so a busy service cannot make the two look different.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            stored = await read.snapshot_wallets(conn)
            async for event in read.snapshot_events(conn):
                computed[event.user_id] = wallet.apply(computed.get(event.user_id, empty), event)
                report.events += 1
    report.wallets = len(computed.keys() | stored.keys())
    report.differences = compare(computed, stored)
    return report
