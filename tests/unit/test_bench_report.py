"""The benchmark's own arithmetic, without a database: the table's targets and marks, the soak's
slope, py-spy's collapsed stacks, and the bare baseline answering the service's wallet fields."""

from __future__ import annotations

import importlib
import math
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from service.settings import parse

BENCH = Path(__file__).resolve().parents[2] / "ops" / "bench"


def bench(name: str) -> ModuleType:
    """A script of ops/bench, imported as the scripts import each other (by bare name)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


report = bench("report")
profiling = bench("profiling")
slope = bench("scenarios").slope


def test_every_target_is_printed_with_its_mark() -> None:
    runs = [
        {"ratio_ingest": 1.1, "p99_50": 9.0, "ratio_reads": 0.9, "verify": 250_000.0},
        {"ratio_ingest": 0.9, "p99_50": 12.0, "ratio_reads": 0.97, "verify": 150_000.0},
        {"ratio_ingest": 1.0, "p99_50": 11.0, "ratio_reads": 0.96, "verify": 210_000.0},
    ]
    text, met = report.table(runs, large_log=True, once={"soak_growth": 1.5})
    lines = {ln.split("  ")[0]: ln for ln in text.splitlines()}
    assert lines["ratio ingest/pgbench"].endswith("≥ 1.0         PASS")  # median 1.0
    assert lines["p50 / p99 at 50 % of peak, ms"].endswith("≤ 10.0        MISS")  # median 11
    assert "≥ 0.95" in lines["ratio wallet reads/bare"]
    assert lines["ratio wallet reads/bare"].endswith("PASS")  # median 0.96
    assert lines["verify, events/s"].endswith("≥ 200,000     PASS")
    growth = lines["memory growth per worker over the soak, MiB per 10 min"]
    assert growth.endswith("≤ 5.0 (flat)  PASS") and growth.count("1.50") == 2, growth
    assert lines["ratio debits/pgbench"].endswith("MISS")  # not measured: a miss
    assert not met


def test_a_skipped_step_is_shown_and_marked() -> None:
    text, _ = report.table([{"ingest": 1.0}], large_log=False)
    for label in ("ratio ingest large log/empty log", "memory growth per worker over the soak"):
        line = next(ln for ln in text.splitlines() if ln.startswith(label))
        assert line.endswith("SKIP"), line


def test_slope_is_least_squares() -> None:
    assert slope([(0.0, 10.0), (10.0, 11.0), (20.0, 12.0)]) == pytest.approx(0.1)
    assert slope([(0.0, 1.0), (10.0, 3.0), (20.0, 2.0)]) == pytest.approx(0.05)
    assert math.isnan(slope([(5.0, 1.0)]))


def test_collapsed_stacks_add_up_by_function(tmp_path: Path) -> None:
    one = tmp_path / "a.txt"
    one.write_text(
        "main (app.py:1);handle (web.py:10);query (db.py:5) 6\n"
        "main (app.py:1);handle (web.py:12) 3\n"
        "main (app.py:1);loop (app.py:7);loop (app.py:8) 1\n"
    )
    two = tmp_path / "b.txt"
    two.write_text("main (app.py:2);handle (web.py:10);query (db.py:9) 10\n")
    p = profiling.aggregate([one, two])
    assert p.samples == 20
    assert p.self_time["query (db.py)"] == 16 and p.self_time["handle (web.py)"] == 3
    assert p.total_time["main (app.py)"] == 20 and p.total_time["handle (web.py)"] == 19
    assert p.total_time["loop (app.py)"] == 1  # recursion counts once a sample
    text = profiling.text("ingest", [one, two])
    assert text[0].startswith("profile of ingest: 20 samples from 2 worker(s);")
    assert "     80.0 %  query (db.py)" in text


def test_the_bare_baseline_answers_the_services_wallet_fields() -> None:
    from service.db.read import _WALLET
    from service.web.api import WalletBody

    bare_server = bench("bare_server")
    assert bare_server.WalletBody.__struct_fields__ == WalletBody.__struct_fields__
    assert bare_server._WALLET is _WALLET


@pytest.mark.parametrize("max_inflight", [None, 1, 3])
def test_the_service_configuration_sets_the_writer_only_when_asked(
    max_inflight: int | None,
) -> None:
    procs = bench("procs")
    text = procs.config_text("postgresql://u@127.0.0.1/d", None, max_inflight=max_inflight)
    writer = parse(tomllib.loads(text), {}).writer
    assert writer.max_inflight == (0 if max_inflight is None else max_inflight)
    assert ("[writer]" in text) == (max_inflight is not None)
