"""Operator page sessions signed out before their expiry (web/session.py)."""

from __future__ import annotations

import datetime as dt

import asyncpg

from . import translated


async def end(pool: asyncpg.Pool, session_id: str, expires_at: dt.datetime) -> None:
    """Remember that a session was signed out, until it would have expired anyway."""
    with translated():
        await pool.execute(
            "INSERT INTO operator_sessions_ended (session_id, expires_at) VALUES ($1, $2)"
            " ON CONFLICT (session_id) DO NOTHING",
            session_id,
            expires_at,
        )


async def ended(pool: asyncpg.Pool, session_id: str) -> bool:
    with translated():
        found: bool = await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM operator_sessions_ended WHERE session_id = $1)",
            session_id,
        )
    return found


async def forget_expired(pool: asyncpg.Pool) -> int:
    """Delete the records of signed-out sessions past their expiry; how many."""
    with translated():
        status: str = await pool.execute(
            "DELETE FROM operator_sessions_ended WHERE expires_at < now()"
        )
    return int(status.rsplit(" ", 1)[-1])
