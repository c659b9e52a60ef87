"""The write path's reads on large projections: each finds its rows through an index, never by
reading a whole table, both as planned for its values and as a prepared statement's generic
plan. These tables grow with every wall transaction and signature ever recorded, so a statement
that reads one whole would make every batch slower as the ledger ages."""

from __future__ import annotations

import asyncpg
import pytest

from service.db import write_sql
from tests.integration.test_postback_log_plans import explain_prepared, nodes

ROWS = 50_000

# Wall transactions of two walls; every third one has a click (a reversal linked by its click).
FILL_SETTLEMENTS = """
INSERT INTO settlements (provider, link, click, credit_key, credit_user, credited)
SELECT CASE WHEN i % 2 = 0 THEN 'plans-a' ELSE 'plans-b' END, 'tx-' || i,
       CASE WHEN i % 3 = 0 THEN 'click-' || i END, 'tx-' || i, 'user-' || (i % 5000), 1
FROM generate_series(1, $1::int) AS i
ON CONFLICT DO NOTHING
"""

FILL_SIGNATURES = """
INSERT INTO signatures (provider, signature, signed)
SELECT 'plans-a', sha256(i::text::bytea), sha256(('s' || i)::bytea)
FROM generate_series(1, $1::int) AS i
ON CONFLICT DO NOTHING
"""


@pytest.fixture
async def filled(pool: asyncpg.Pool) -> asyncpg.Pool:
    if await pool.fetchval("SELECT count(*) FROM settlements WHERE provider = 'plans-a'") == 0:
        await pool.execute(FILL_SETTLEMENTS, ROWS, timeout=300)
        await pool.execute(FILL_SIGNATURES, ROWS, timeout=300)
        await pool.execute("ANALYZE settlements, signatures", timeout=300)
    return pool


CASES = {
    # A batch of two credits, one naming a click.
    "settlements": (
        write_sql.SETTLEMENTS,
        "'{plans-a,plans-b}', '{tx-10,tx-11}', '{plans-a}', '{click-12}'",
        "settlements",
    ),
    # A batch with no click at all: the click lookup must not read the click index whole.
    "settlements without clicks": (
        write_sql.SETTLEMENTS,
        "'{plans-a}', '{tx-10}', '{}', '{}'",
        "settlements",
    ),
    "signatures": (
        write_sql.SIGNATURES,
        "'{plans-a,plans-a}', ARRAY[sha256('7'::bytea), sha256('8'::bytea)]",
        "signatures",
    ),
}


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_write_path_read_uses_an_index(
    filled: asyncpg.Pool, case: str, generic: bool
) -> None:
    query, values, table = CASES[case]
    plan = await explain_prepared(filled, query, values, generic)
    scans = [n for n in nodes(plan) if n.get("Relation Name") == table]
    assert scans, plan
    for scan in scans:
        assert scan["Node Type"] != "Seq Scan", plan
        # An index read from end to end is a whole-table read too: each scan must be bounded
        # by the batch's values (an index condition or the inner side of a nested loop).
        assert "Index Cond" in scan, plan


async def test_settlements_finds_by_link_and_by_click(filled: asyncpg.Pool) -> None:
    rows = await filled.fetch(
        write_sql.SETTLEMENTS, ["plans-a", "plans-b"], ["tx-10", "tx-11"], ["plans-a"], ["click-12"]
    )
    assert sorted(r["link"] for r in rows) == ["tx-10", "tx-11", "tx-12"]
    # The same row found both ways comes once.
    rows = await filled.fetch(
        write_sql.SETTLEMENTS, ["plans-a"], ["tx-12"], ["plans-a"], ["click-12"]
    )
    assert [r["link"] for r in rows] == ["tx-12"]
