"""ops/bench/scrape_flood.py --quick end to end: postback latency alone and under a /metrics
flood, printed side by side. Its figures are not judged here, only that each was measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_scrape_flood_prints_both_latencies(admin_dsn: str) -> None:
    removed = ("DATABASE_URL", "LEDGER_CONFIG", "BENCH_DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in removed}
    done = subprocess.run(
        [sys.executable, "ops/bench/scrape_flood.py", "--quick", "--database-url", admin_dsn],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    lines = done.stdout.splitlines()
    for label in ("alone", "under the scrape flood"):
        row = next(line for line in lines if line.startswith(label))
        p50, p99 = (float(x) for x in row[len(label) :].split())
        assert 0 < p50 <= p99, row
    assert any(line.startswith("scrapes answered during the flood") for line in lines)
