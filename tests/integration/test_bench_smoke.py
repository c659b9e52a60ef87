"""`make bench` in miniature: ops/bench/bench.py --quick runs every scenario end to end against
the test suite's PostgreSQL and prints the whole table. Its figures are not judged here (speed
targets belong to the benchmark itself, on a quiet machine), only that each one was measured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 90  # seconds; the quick run took about 35 on a 2-core machine shared with other work

ROWS = (
    "ingest (service), postbacks/s",
    "ingest (pgbench, same SQL), tx/s",
    "ratio ingest/pgbench",
    "debits (service), debits/s",
    "debits (pgbench, same SQL), tx/s",
    "ratio debits/pgbench",
    "p50 / p99 at 50 % of peak, ms",
    "p50 / p99 at 80 % of peak, ms",
    "wallet reads (service), req/s",
    "wallet reads (bare aiohttp), req/s",
    "ratio wallet reads/bare aiohttp",
    "verify, events/s",
    "errors (non-2xx answers, failed steps)",
)


@pytest.mark.slow
def test_quick_bench_prints_every_row(admin_dsn: str) -> None:
    removed = ("DATABASE_URL", "LEDGER_CONFIG", "BENCH_DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in removed}
    proc = subprocess.Popen(
        [sys.executable, "ops/bench/bench.py", "--quick", "--database-url", admin_dsn],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the bench stop the servers it started before it exits.
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"bench --quick took more than {LIMIT} s:\n{out}\n{err}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    table = out[out.index("figure") :]
    for label in ROWS:
        line = next((ln for ln in table.splitlines() if ln.startswith(label)), None)
        assert line is not None, f"no row {label!r}:\n{out}"
        assert " - " not in f"{line} " and not line.rstrip().endswith("-"), line
    assert "ratio ingest large log/empty log" not in out  # only with --large-log
    for target in ("≥ 1.0", "≤ 20.0", "≥ 0.7", "≥ 200,000"):
        assert target in table, target
    assert "verify: ok" in out
    # Every debit was answered 201: the funding covered them all, none was refused.
    debits = next(ln for ln in out.splitlines() if ln.strip().startswith("debits (service):"))
    assert "answered 2xx" in debits and "ERRORS" not in debits, debits
