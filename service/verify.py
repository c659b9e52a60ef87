"""`verify`: recompute every projection (wallets, receipt offers, settlements) from the event log
and compare it with what the database holds; check every hash chain, the triggers that protect
the log and what the runtime role may do to it; with a checkpoint, that nothing recorded before
it was rewritten. Read-only throughout."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from .chains import Chains, check_chains
from .db import read, roles, translated, verify_sql
from .domain import holds, receipt_offers, settlement, wallet
from .domain.amounts import format_amount
from .domain.chain import ChainKey
from .domain.checkpoint import FORMAT, Checkpoint, heads_digest
from .replay import fold, replay

_FIELDS = wallet.Wallet.__struct_fields__

log = logging.getLogger(__name__)

# Opens one more connection to the same database: the projections are then checked on it, in the
# first connection's snapshot, while the first streams the log for its hash chains.
Connect = Callable[[], Awaitable[asyncpg.Connection]]


@dataclass
class Report:
    events: int = 0
    wallets: int = 0
    offers: int = 0
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said in the summary, not differences

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        counts = f"{self.wallets} wallets and {self.offers} receipt offers"
        notes = "".join(f"; {note}" for note in self.notes)
        if self.ok:
            return f"verify: ok: {counts} agree with {self.events} events{notes}"
        return (
            f"verify: FAILED: {len(self.differences)} differences between {counts}"
            f" and {self.events} events{notes}"
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


_OFFER_FIELDS = receipt_offers.ReceiptOffer.__struct_fields__


_SETTLEMENT_FIELDS = settlement.Settlement.__struct_fields__


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


def compare_holds(computed: Mapping[str, holds.Hold], stored: Mapping[str, Any]) -> list[str]:
    """One line per hold whose projection differs from the replay of its events."""
    return _compare_keyed("hold", computed, stored, holds.Hold.__struct_fields__)


def _compare_keyed(
    kind: str,
    computed: Mapping[Any, object],
    stored: Mapping[Any, Any],
    fields: tuple[str, ...],
) -> list[str]:
    differences = []
    for key in sorted(computed.keys() | stored.keys()):
        name = f"{kind} {key[0]}/{key[1]!r}" if isinstance(key, tuple) else f"{kind} {key!r}"
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


async def verify(
    conn: asyncpg.Connection,
    key: ChainKey,
    runtime_role: str | None = None,
    checkpoint: Checkpoint | None = None,
    connect: Connect | None = None,
) -> Report:
    """Check everything (see the module); `runtime_role` defaults to the connection's own role.
    With `checkpoint` (already checked against the key), also compare its chain heads. With
    `connect`, the projections are checked at the same time as the chains, on a second
    connection that shares the first one's snapshot (one after the other when it cannot)."""
    boundary = None if checkpoint is None else checkpoint.boundary
    report, result, xmin = await _examine(conn, key, runtime_role, boundary, connect)
    if checkpoint is not None:
        report.differences += _against(checkpoint, result, xmin)
        if report.ok:
            report.notes.append(
                f"the checkpoint of {checkpoint.taken_at} matches ({checkpoint.events} events)"
            )
    return report


async def take_checkpoint(
    conn: asyncpg.Connection,
    key: ChainKey,
    runtime_role: str | None = None,
    connect: Connect | None = None,
) -> tuple[Report, Checkpoint | None]:
    """Verify, and sign the chain heads of every event of a transaction below this snapshot's
    xmin; no checkpoint when a chain is broken (it would vouch for a log that is not intact).
    Other differences (projections, protections) do not touch history: the report has them."""
    report, result, xmin = await _examine(conn, key, runtime_role, None, connect)
    if result.chain_breaks:
        return report, None
    checkpoint = Checkpoint(
        format=FORMAT,
        taken_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        boundary=xmin,
        events=result.head_events,
        users=len(result.heads),
        heads=heads_digest(result.heads),
    ).signed(key)
    return report, checkpoint


async def _examine(
    conn: asyncpg.Connection,
    key: ChainKey,
    runtime_role: str | None,
    boundary: int | None,
    connect: Connect | None,
) -> tuple[Report, Chains, int]:
    if connect is not None:
        try:
            return await _examine_once(conn, key, runtime_role, boundary, connect)
        except _NoSnapshot as exc:
            # Its transaction is rolled back (the refusal aborted it): again, on one connection.
            log.debug("verify: one connection (no snapshot to share: %s)", exc.__cause__)
    return await _examine_once(conn, key, runtime_role, boundary, None)


class _NoSnapshot(Exception):
    """The server would not export the snapshot of `verify`'s transaction."""


async def _examine_once(
    conn: asyncpg.Connection,
    key: ChainKey,
    runtime_role: str | None,
    boundary: int | None,
    connect: Connect | None,
) -> tuple[Report, Chains, int]:
    with translated():
        # One snapshot for the log and the projections: writes that commit meanwhile are in
        # none of them, so a busy service cannot make them look different.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = None if connect is None else await _export_snapshot(conn)
            await read.require_schema(conn)
            xmin = await read.snapshot_boundary(conn)
            role = runtime_role or await roles.current_role(conn)
            guards = [
                *await roles.trigger_problems(conn),
                *await roles.runtime_problems(conn, role),
            ]
            below = xmin if boundary is None else boundary
            second = None
            if connect is not None and snapshot is not None:
                second = await _sharing_snapshot(snapshot, connect)
            if second is None:
                chains = await check_chains(conn, key, below)
                projections = await _fast_projections(conn)
            else:
                chains, projections = await _overlapped(conn, second, key, below)
            if projections is None:
                # Something differs: the domain fold of the whole log names every difference.
                projections = await _replayed_projections(conn, key)
    differences, wallets, offers = projections
    report = Report(
        events=chains.events,
        wallets=wallets,
        offers=offers,
        differences=[*guards, *chains.chain_breaks, *differences],
    )
    if chains.unkeyed:
        report.notes.append(f"{chains.unkeyed} events unkeyed (hashed before the chain key)")
    return report, chains, xmin


Projections = tuple[list[str], int, int]  # differences, wallets, receipt offers

_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")


async def _export_snapshot(conn: asyncpg.Connection) -> str | None:
    """The id of the snapshot of `conn`'s transaction (the first statement of a repeatable read
    one), for a second connection; _NoSnapshot when the server refuses (a replica may), which
    aborts the transaction; None for an id that does not look like one."""
    try:
        snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
    except asyncpg.PostgresError as exc:
        raise _NoSnapshot() from exc
    if isinstance(snapshot, str) and _SNAPSHOT_ID.fullmatch(snapshot):
        return snapshot
    log.debug("verify: one connection (unexpected snapshot id %r)", snapshot)
    return None


async def _sharing_snapshot(snapshot: str, connect: Connect) -> asyncpg.Connection | None:
    """A second connection in a read-only transaction with the exported `snapshot`; None when
    it cannot be had (a pooler in transaction mode, a refused connection)."""
    second: asyncpg.Connection | None = None
    try:
        second = await connect()
        await second.transaction(isolation="repeatable_read", readonly=True).start()
        await second.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    except Exception as exc:
        log.debug("verify: one connection (the snapshot could not be shared: %s)", exc)
        if second is not None:
            await _close(second)
        return None
    return second


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=5)
    except Exception:
        conn.terminate()


async def _overlapped(
    conn: asyncpg.Connection, second: asyncpg.Connection, key: ChainKey, below: int
) -> tuple[Chains, Projections | None]:
    """The chains on `conn` and the fast projections on `second` at the same time; `second`
    closed in every case."""
    folding = asyncio.create_task(_fast_projections(second))
    try:
        chains = await check_chains(conn, key, below)
        projections = await folding
    except BaseException:
        second.terminate()  # ends the statement it may be running, at once
        folding.cancel()
        await asyncio.gather(folding, return_exceptions=True)
        raise
    await _close(second)
    return chains, projections


async def _fast_projections(conn: asyncpg.Connection) -> Projections | None:
    """The projections checked with most of the log folded in SQL (db/verify_sql.py) and the
    rest (receipt offers, holds, transactions linked by a click or contested) by the domain
    fold; None when anything differs, to be named by `_replayed_projections`."""
    checked = await _fold_and_compare(conn, contested=False)
    if checked is None:
        # Contested transactions (from a log written before they were refused): fold them in
        # Python too, and compare again.
        checked = await _fold_and_compare(conn, contested=True)
    return checked or None


async def _fold_and_compare(
    conn: asyncpg.Connection, contested: bool
) -> Projections | tuple[()] | None:
    """One pass of `_fast_projections`: None when `FOLD` saw contested transactions it was not
    told about, () when something differs."""
    replayed = fold(await verify_sql.replayed_events(conn, contested))
    links = replayed.settlements.keys()
    stored_offers = await read.snapshot_offers(conn)
    found = [
        *compare_offers(replayed.offers, stored_offers),
        *compare_settlements(
            replayed.settlements, await verify_sql.stored_settlements(conn, links)
        ),
        *compare_holds(replayed.holds, await read.snapshot_holds(conn)),
    ]
    moved = [
        (user, w.total_credited, w.total_reversed, w.total_debited)
        for user, w in replayed.wallets.items()
    ]
    row = await verify_sql.fold(conn, links, moved)
    if row["contested"]:
        return () if contested else None
    if found or row["wallet_differences"] or row["settlement_differences"]:
        return ()
    return [], row["wallets"], len(replayed.offers.keys() | stored_offers.keys())


async def _replayed_projections(conn: asyncpg.Connection, key: ChainKey) -> Projections:
    """Every projection against the domain fold of the whole log, one line per difference."""
    stored = await read.snapshot_wallets(conn)
    stored_offers = await read.snapshot_offers(conn)
    stored_settlements = await read.snapshot_settlements(conn)
    stored_holds = await read.snapshot_holds(conn)
    result = await replay(conn, "verify", key)
    differences = [
        *compare(result.wallets, stored),
        *compare_offers(result.offers, stored_offers),
        *compare_settlements(result.settlements, stored_settlements),
        *compare_holds(result.holds, stored_holds),
    ]
    return (
        differences,
        len(result.wallets.keys() | stored.keys()),
        len(result.offers.keys() | stored_offers.keys()),
    )


def _against(checkpoint: Checkpoint, result: Chains, xmin: int) -> list[str]:
    """The difference between a checkpoint and the chain heads at its boundary now, if any."""
    name = f"checkpoint of {checkpoint.taken_at}"
    if xmin < checkpoint.boundary:
        return [
            f"{name}: its boundary (transaction {checkpoint.boundary}) is ahead of this"
            f" database (transaction {xmin}): it is from another database, or this one was"
            " restored from an older backup"
        ]
    now = (result.head_events, len(result.heads), heads_digest(result.heads))
    if now != (checkpoint.events, checkpoint.users, checkpoint.heads):
        return [
            f"{name}: the events recorded before it ({checkpoint.events} events of"
            f" {checkpoint.users} users then, {now[0]} events of {now[1]} users now) do not"
            " end in the chain heads it signed: history before the checkpoint was rewritten"
        ]
    return []
