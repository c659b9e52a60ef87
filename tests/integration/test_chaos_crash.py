"""`make chaos` scenario 1 in miniature (ops/chaos/crash.py): kill -9 under load.

(a) The service (its whole process group) is killed three times under a small load, on a
database of the shared test server (only the service dies there). (b) The postmaster of a
server of this module's own is killed -9 under load and started again; the service must serve
again by itself after crash recovery. Spending requests (debits, internal credits, holds captured
or voided) run beside the postbacks, retried under their Idempotency-Key. Either way, nothing
acknowledged may be missing, no provider ID or Idempotency-Key applied twice, and verify must be
clean. The shared test server under .data/test-postgres is never killed: the other tests use it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.chaos import common, crash, spendload

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dedicated() -> Iterator[common.Postgres]:
    """An embedded PostgreSQL of this module's own, which it may kill."""
    data_dir = ROOT / ".data" / "chaos-test" / f"crash-{uuid.uuid4().hex[:8]}"
    assert data_dir.resolve() != (ROOT / ".data" / "test-postgres").resolve()
    server = common.Postgres("", data_dir)
    server.start()
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.slow
async def test_service_killed_three_times_under_load_loses_nothing(
    database_url: str, tmp_path: Path
) -> None:
    # One worker keeps this short; `make chaos` kills the supervisor and its workers together.
    opts = crash.Options(
        kills=3, pg_kills=0, workers=1, gap_min=0.3, gap_max=0.8, rate=150, concurrency=8
    )
    report = await crash.scenario(database_url, None, opts, tmp_path, common.Say("crash-a"))
    assert not report.problems, report.render()
    audit: common.Audit = report.data["audit"]
    assert len(report.data["restarts"]) == 3
    assert audit.acknowledged > 0 and audit.events > 0
    assert audit.verify_code == 0 and not audit.missing and not audit.double_applied
    spent: spendload.SpendAudit = report.data["spending"]
    assert spent.kinds["debit"].acknowledged > 0 and spent.kinds["hold"].acknowledged > 0
    assert spent.lost == 0 and spent.doubled == 0 and not spent.retries_422
    assert not spent.wallets_off and not spent.below_zero


@pytest.mark.slow
async def test_postmaster_killed_under_load_recovers_and_loses_nothing(
    dedicated: common.Postgres, tmp_path: Path
) -> None:
    dsn = await dedicated.create_database("test")
    opts = crash.Options(
        kills=0,
        pg_kills=1,
        workers=1,
        warmup=1.5,
        settle=1.5,
        rate=150,
        concurrency=8,
        recovery_limit=20,
    )
    report = await crash.scenario(dsn, dedicated, opts, tmp_path, common.Say("crash-b"))
    assert not report.problems, report.render()
    (kill,) = report.data["postmaster_kills"]
    assert not kill.restarted_service and kill.recovered_after is not None
    audit: common.Audit = report.data["audit"]
    assert audit.acknowledged > 0 and audit.verify_code == 0 and not audit.missing
    spent: spendload.SpendAudit = report.data["spending"]
    assert spent.kinds["debit"].acknowledged > 0 and spent.lost == 0 and spent.doubled == 0
