"""Every event's hash and its link to the previous event of its user, checked as fast as the
log can be read: each event's hashed bytes are rebuilt here from its stored fields
(chain.body) and hashed with the chain key, which never leaves this process. The first event
that breaks each user's chain is named, as `replay` names it; with a boundary, the chain heads
below it are collected for checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from .db import read, verify_sql
from .domain import chain
from .domain.chain import ChainKey
from .progress import Progress


@dataclass
class Chains:
    events: int = 0
    unkeyed: int = 0  # events hashed before the chain key existed (chain 0)
    chain_breaks: list[str] = field(default_factory=list)
    # With a boundary: each user's chain head (hex) among the events of transactions below it.
    heads: dict[str, str] = field(default_factory=dict)
    head_events: int = 0


async def check_chains(conn: asyncpg.Connection, key: ChainKey, boundary: int | None) -> Chains:
    """Call inside a transaction that sees a stable log (repeatable read)."""
    result = Chains()
    mac = key.mac_function()
    keyed, unkeyed_chain = chain.KEYED, chain.UNKEYED
    last: dict[str, bytes | None] = {}  # user -> hash of the user's latest event
    below: dict[str, bytes | None] = {}  # the same, among events below the boundary
    broken: set[str] = set()
    first_keyed: int | None = None
    events = unkeyed = head_events = 0
    progress = Progress("verify", await read.log_size(conn))
    body, instant = chain.body, chain.instant
    at: object = None
    when = b""
    async for rows in verify_sql.chain_batches(conn, boundary):
        for (
            position,
            user,
            version,
            prev,
            stored,
            is_below,
            provider,
            event_key,
            kind,
            amount,
            ref,
            test,
            data,
            recorded_at,
        ) in rows:
            if recorded_at != at:  # the events of one transaction share their time
                at, when = recorded_at, instant(recorded_at)
            hashed = body(position, provider, event_key, kind, user, amount, ref, test, data, when)
            if version == unkeyed_chain:
                unkeyed += 1
            elif first_keyed is None:
                first_keyed = position
            # The common case in one test: a keyed hash that matches and chains on.
            if (
                not (
                    version == keyed
                    and stored is not None
                    and mac(hashed if prev is None else prev + hashed) == stored
                    and prev == last.get(user)
                )
                and user not in broken
            ):
                problem = chain.problem(
                    version, prev, stored, hashed, key, last.get(user), first_keyed
                )
                if problem:
                    # Only the first break of each user's chain is named: later events chain
                    # to it.
                    broken.add(user)
                    result.chain_breaks.append(f"event {position} (user {user!r}): {problem}")
            last[user] = stored
            if is_below:
                below[user] = stored
                head_events += 1
        events += len(rows)
        progress.advance(len(rows))
    progress.done()
    result.events, result.unkeyed, result.head_events = events, unkeyed, head_events
    result.heads = {user: "" if h is None else h.hex() for user, h in below.items()}
    return result
