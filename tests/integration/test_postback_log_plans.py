"""The postback log's pages on a large log: for each filter, the statement `read.postbacks`
runs reads the index made for that filter in each partition (a day of the log), in its order
(no Sort), never a whole table, both as planned for its values and as a prepared statement's
generic plan. A partition's indexes are named after the log's: <index>_<day>."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from service.db import read

ROWS = 200_000
USERS = 20_000
END = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
START = END - dt.timedelta(days=90)

# Ten rows to one time (as a group commit writes them), times growing with the ids; 20
# providers, wall00 the busiest; 4 % rejected, 1 % invalid.
FILL = """
INSERT INTO postback_log (received_at, request_id, provider, outcome, http_status, client_ip,
                          method, params, user_id, transaction, reason)
SELECT $1::timestamptz + (i / 10) * $2::interval, 'req-' || i,
       'wall' || lpad(floor(20 * s * s)::int::text, 2, '0'),
       CASE WHEN r < 0.04 THEN 'rejected' WHEN r < 0.05 THEN 'invalid'
            WHEN r < 0.9 THEN 'credited' ELSE 'duplicate' END,
       CASE WHEN r < 0.04 THEN 403 WHEN r < 0.05 THEN 400 ELSE 200 END,
       '203.0.113.1', 'GET', jsonb_build_object('subid', 'user-' || floor(u * $3::int)),
       'user-' || floor(u * $3::int), 'tx-' || CASE WHEN r >= 0.9 THEN i - 1 ELSE i END,
       CASE WHEN r < 0.04 THEN 'signature' END
FROM (SELECT i, random() AS r, random() AS s, random() AS u
      FROM generate_series(1, $4::bigint) AS i) AS g
"""


@pytest.fixture
async def filled(pool: asyncpg.Pool) -> asyncpg.Pool:
    if await pool.fetchval("SELECT count(*) FROM postback_log") < ROWS:
        # A partition for each day of the fill, as the upkeep would have made them day by day.
        await pool.fetch(
            "SELECT * FROM postback_log_prepare($1::date, $2::date)", START.date(), END.date()
        )
        step = (END - START) / (ROWS // 10)
        async with pool.acquire() as conn:
            # The same rows on every run: the planner's choices follow the counts, and a
            # filter near a page's worth of rows must not be on one side of it now and then.
            await conn.execute("SELECT setseed(0.25)")
            await conn.execute(FILL, START, step, USERS, ROWS, timeout=600)
        await pool.execute("ANALYZE postback_log", timeout=600)
    return pool


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def literal(value: object) -> str:
    """An argument as SQL text (EXECUTE takes no parameters): the test's own values only."""
    text = value.isoformat() if isinstance(value, dt.datetime) else str(value)
    return "'" + text.replace("'", "''") + "'"


async def explain_prepared(
    pool: asyncpg.Pool, query: str, values: str, generic: bool
) -> dict[str, Any]:
    """The plan of `query` for `values` (SQL text), or the generic plan a prepared statement may
    settle on after a few runs (it cannot see the values)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"PREPARE page AS {query}")
        mode = "force_generic_plan" if generic else "force_custom_plan"
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE page({values})")
        await conn.execute("DEALLOCATE page")
    plan: dict[str, Any] = json.loads(text)[0]["Plan"]
    return plan


async def explain(pool: asyncpg.Pool, where: read.LogFilter, generic: bool) -> dict[str, Any]:
    """The plan of the log's page statement for `where`'s values, custom or generic."""
    query, args = read.postbacks_query(where, 100)
    return await explain_prepared(pool, query, ", ".join(literal(v) for v in args), generic)


def shown(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=1)


def scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in nodes(plan) if "Index Name" in n]


def of_index(scan: dict[str, Any], index: str) -> bool:
    """The scan reads `index` of the log, in one of its partitions."""
    name: str = scan["Index Name"]
    return name == index or name.startswith(f"{index}_")


MIDDLE = START + dt.timedelta(days=45)
CURSOR = (MIDDLE, ROWS // 2)
QUIET = "wall19"  # about 2.5 % of the rows

# Filters that match many rows: the page is the first 100 rows of backward scans of the index
# in each partition the filter leaves (merged in order, or one after the other when the
# partitions are known to be in order), every condition in their Index Cond.
ORDERED = {
    "none": (read.LogFilter(), "postback_log_recent"),
    "provider": (read.LogFilter(provider=QUIET), "postback_log_provider"),
    # The busiest wall too: never a walk down the time index discarding the other walls' rows
    # (which, once that wall went quiet, would read everything since its last postback).
    "busy provider": (read.LogFilter(provider="wall00"), "postback_log_provider"),
    "busy outcome": (read.LogFilter(outcome="credited"), "postback_log_outcome"),
    "outcome": (read.LogFilter(outcome="rejected"), "postback_log_outcome"),
    "since+until": (
        read.LogFilter(since=MIDDLE, until=MIDDLE + dt.timedelta(hours=6)),
        "postback_log_recent",
    ),
    "provider+before": (read.LogFilter(provider=QUIET, before=CURSOR), "postback_log_provider"),
    "before": (read.LogFilter(before=CURSOR), "postback_log_recent"),
    "outcome+since+until": (
        read.LogFilter(
            outcome="rejected",
            since=MIDDLE + dt.timedelta(hours=6),
            until=MIDDLE + dt.timedelta(hours=18),
        ),
        "postback_log_outcome",
    ),
}

# Filters that match a handful of rows: their index finds them all, whether in order or
# sorted afterwards (a few rows: the planner may rightly prefer a bitmap scan and a sort).
FEW = {
    "user": (read.LogFilter(user_id="user-123"), "postback_log_user"),
    "transaction": (read.LogFilter(transaction="tx-4242"), "postback_log_transaction"),
    "user+since": (read.LogFilter(user_id="user-123", since=MIDDLE), "postback_log_user"),
    "user+before": (read.LogFilter(user_id="user-7", before=CURSOR), "postback_log_user"),
}


def assert_no_table_scan(plan: dict[str, Any], empty: set[str]) -> None:
    """No table is read whole, but those the planner knows to be empty (the partitions of the
    days ahead, the default partition): reading one of those is reading nothing."""
    read = {n["Relation Name"] for n in nodes(plan) if n["Node Type"] == "Seq Scan"}
    assert read <= empty, shown(plan)
    assert plan["Node Type"] == "Limit", shown(plan)


async def empty_partitions(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch(
        "SELECT c.relname FROM postback_log_partitions() AS p"
        " JOIN pg_class AS c ON c.oid = p.partition WHERE c.relpages = 0"
    )
    return {r["relname"] for r in rows}


@pytest.mark.parametrize(
    ("case", "generic"),
    [
        pytest.param(case, generic, id=f"{case}-{'generic' if generic else 'custom'}")
        for case in ORDERED
        for generic in (False, True)
    ],
)
async def test_each_filter_reads_its_own_index_in_order(
    filled: asyncpg.Pool, case: str, generic: bool
) -> None:
    where, index = ORDERED[case]
    plan = await explain(filled, where, generic)
    assert_no_table_scan(plan, await empty_partitions(filled))
    found = scans(plan)
    assert found and all(of_index(scan, index) for scan in found), shown(plan)
    assert not any("Filter" in scan for scan in found), shown(plan)  # nothing read to discard
    sorts = [n for n in nodes(plan) if n["Node Type"] in {"Sort", "Incremental Sort"}]
    if sorts:
        # Only where the filter finds fewer rows than a page in the partitions it leaves (one
        # outcome over 12 hours across two days here, about 45 rows): they are all read
        # through the index, then sorted.
        assert all(n["Plan Rows"] <= 100 for n in sorts), shown(plan)
        return
    (top,) = plan["Plans"]
    assert top["Node Type"] in {"Index Scan", "Index Only Scan", "Append", "Merge Append"}
    for scan in found:
        assert scan["Node Type"] in {"Index Scan", "Index Only Scan"}, shown(plan)
        assert scan["Scan Direction"] == "Backward", shown(plan)


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("case", list(FEW))
async def test_a_selective_filter_reads_only_its_rows_through_its_index(
    filled: asyncpg.Pool, case: str, generic: bool
) -> None:
    where, index = FEW[case]
    plan = await explain(filled, where, generic)
    assert_no_table_scan(plan, await empty_partitions(filled))
    found = scans(plan)
    assert found and all(of_index(scan, index) for scan in found), shown(plan)
    assert not any("Filter" in scan for scan in found), shown(plan)
    for node in nodes(plan):
        if "Sort" in node["Node Type"]:
            assert node["Plan Rows"] <= 100, shown(plan)
        assert not node["Node Type"].startswith("Bitmap") or node["Plan Rows"] <= 100, shown(plan)


@pytest.mark.parametrize("provider", [None, QUIET])
async def test_a_page_before_a_postback_id_takes_its_time_from_the_primary_key(
    filled: asyncpg.Pool, provider: str | None
) -> None:
    plan = await explain(filled, read.LogFilter(provider=provider, before_id=ROWS // 2), False)
    assert_no_table_scan(plan, await empty_partitions(filled))
    assert not any("Sort" in n["Node Type"] for n in nodes(plan)), shown(plan)
    index = "postback_log_recent" if provider is None else "postback_log_provider"
    # The postback's time: its partition's primary key, probed in each partition.
    keys = [n for n in scans(plan) if of_index(n, "postback_log_pkey")]
    main = [n for n in scans(plan) if of_index(n, index)]
    assert keys and main and len(keys) + len(main) == len(scans(plan)), shown(plan)
    for scan in main:
        assert "Filter" not in scan and scan["Scan Direction"] == "Backward", shown(plan)
