"""`make chaos` scenario 2 in miniature (ops/chaos/outage.py): PostgreSQL (a server of this
module's own, never the shared test server) is stopped for 2 s under load. Every postback
asked and answered meanwhile is 503, /readyz turns 503, the service serves again within 2 s of
the database's return without a restart, its pool stays within bounds, nothing acknowledged is
lost and verify is clean."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.chaos import common, outage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dedicated() -> Iterator[common.Postgres]:
    """An embedded PostgreSQL of this module's own, which it may stop."""
    data_dir = ROOT / ".data" / "chaos-test" / f"outage-{uuid.uuid4().hex[:8]}"
    assert data_dir.resolve() != (ROOT / ".data" / "test-postgres").resolve()
    server = common.Postgres("", data_dir)
    server.start()
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.slow
async def test_two_second_outage_answers_503_and_recovers_within_2_s(
    dedicated: common.Postgres, tmp_path: Path
) -> None:
    dsn = await dedicated.create_database("test")
    opts = outage.Options(
        outage=2.0,
        warmup=1.5,
        after=2.5,
        workers=1,
        rate=150,
        concurrency=8,
    )
    report = await outage.scenario(dsn, dedicated, opts, tmp_path, common.Say("outage"))
    assert report.ok, report.render()
    assert report.data["during"] > 0
    assert report.data["recovered"] is not None and report.data["recovered"] <= 2.0
    assert any(p.status == 503 for p in report.data["readyz"])
    audit: common.Audit = report.data["audit"]
    assert audit.acknowledged > 0 and audit.verify_code == 0 and not audit.missing
