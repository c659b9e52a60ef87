"""The front of the write path that handlers talk to.

Today every postback is its own batch; the store already takes batches, so gathering concurrent
postbacks into one transaction changes this class only.
"""

from __future__ import annotations

import asyncpg

from .db.write import Receipt, Submission, append


class Writer:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def submit(self, submission: Submission) -> Receipt:
        """Record one postback; raises `db.Unavailable` when it could not be committed."""
        (receipt,) = await append(self._pool, [submission])
        return receipt
