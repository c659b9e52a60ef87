"""The printed table: each run's figures side by side, their medians, and a PASS/MISS mark of
each median against its target."""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Figures = dict[str, float]


@dataclass(frozen=True)
class Row:
    label: str
    keys: tuple[str, ...]  # one figure, or p50 and p99 shown as "p50 / p99"
    digits: int = 0
    target: tuple[str, str, float] | None = None  # (key, ">=" or "<=", value)
    large_log: bool = False  # shown only when the large log is measured
    once: bool = False  # measured once per benchmark (the soak), not in every run


# Memory growth over the soak: RSS moves by whole pymalloc arenas (1 MiB) and glibc heap trims,
# so a flat worker wanders by a few MiB; 5 MiB per 10 minutes bounds a leak at under 9 bytes a
# request at 1,000 postbacks/s (a leak of 1 KiB a request would show 586 MiB).
GROWTH_LIMIT = 5.0

ROWS = (
    Row("ingest (service), postbacks/s", ("ingest",)),
    Row("ingest (pgbench, same SQL), tx/s", ("pgbench",)),
    Row("ratio ingest/pgbench", ("ratio_ingest",), 2, ("ratio_ingest", ">=", 1.0)),
    Row("p50 / p99 at 50 % of peak, ms", ("p50_50", "p99_50"), 1, ("p99_50", "<=", 10.0)),
    Row("p50 / p99 at 80 % of peak, ms", ("p50_80", "p99_80"), 1),
    Row("wallet reads (service), req/s", ("reads",)),
    Row("wallet reads (bare aiohttp + asyncpg), req/s", ("bare",)),
    Row("ratio wallet reads/bare", ("ratio_reads",), 2, ("ratio_reads", ">=", 0.95)),
    Row("debits (service), debits/s", ("debits",)),
    Row("debits (pgbench, same SQL), tx/s", ("pgbench_debits",)),
    Row("ratio debits/pgbench", ("ratio_debits",), 2, ("ratio_debits", ">=", 1.0)),
    Row("verify, events/s", ("verify",), 0, ("verify", ">=", 200_000.0)),
    Row("ingest with large log, postbacks/s", ("ingest_large",), large_log=True),
    Row(
        "ratio ingest large log/empty log",
        ("ratio_large",),
        2,
        ("ratio_large", ">=", 0.95),
        large_log=True,
    ),
    Row("memory per worker under load, MiB (max RSS)", ("rss",), 1),
    Row("soak: RSS per worker at start / end, MiB", ("soak_start", "soak_end"), 1, once=True),
    Row(
        "memory growth per worker over the soak, MiB per 10 min",
        ("soak_growth",),
        2,
        ("soak_growth", "<=", GROWTH_LIMIT),
        once=True,
    ),
    Row("errors (non-2xx answers, failed steps)", ("errors",)),
)

_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


def derive(f: Figures) -> None:
    """Add the ratios, each from figures of the same run."""

    def ratio(a: str, b: str) -> float:
        x, y = f.get(a, math.nan), f.get(b, math.nan)
        return x / y if y and not math.isnan(x) and not math.isnan(y) else math.nan

    f["ratio_ingest"] = ratio("ingest", "pgbench")
    f["ratio_debits"] = ratio("debits", "pgbench_debits")
    f["ratio_reads"] = ratio("reads", "bare")
    if "ingest_large" in f:
        f["ratio_large"] = ratio("ingest_large", "ingest")


def median(runs: Sequence[Figures], key: str) -> float:
    values = [r[key] for r in runs if not math.isnan(r.get(key, math.nan))]
    return statistics.median(values) if values else math.nan


def _cell(runs: Figures, row: Row) -> str:
    values = [runs.get(k, math.nan) for k in row.keys]
    if all(math.isnan(v) for v in values):
        return "-"
    return " / ".join("-" if math.isnan(v) else f"{v:,.{row.digits}f}" for v in values)


def _number(value: float) -> str:
    """A target as written: 200,000; 10.0; 0.95."""
    if value >= 100:
        return f"{value:,.0f}"
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def skipped(row: Row, large_log: bool, soak: bool) -> bool:
    """Whether the row's step was left out (--no-large-log, --soak 0): shown, marked SKIP."""
    return (row.large_log and not large_log) or (row.once and not soak)


def table(
    runs: Sequence[Figures], large_log: bool, once: Figures | None = None
) -> tuple[str, bool]:
    """The table, and whether every target was met; `once` holds the figures measured once
    (the soak's), shown under run 1 and as their own median."""
    once = once or {}
    runs = [dict(r) for r in runs]
    if runs:
        runs[0].update(once)
    medians = {k: median(runs, k) for row in ROWS for k in row.keys}
    header = ["figure", *(f"run {i}" for i in range(1, len(runs) + 1)), "median", "target", ""]
    lines = [header]
    all_met = True
    for row in ROWS:
        target, mark = "", ""
        if row.target is not None:
            key, op, value = row.target
            target = f"{'≥' if op == '>=' else '≤'} {_number(value)}"
            target += " (flat)" if key == "soak_growth" else ""
        if row.target is not None and skipped(row, large_log, bool(once)):
            mark = "SKIP"
        elif row.target is not None:
            got = medians[key]
            met = not math.isnan(got) and _OPS[op](got, value)
            mark = "PASS" if met else "MISS"
            all_met &= met
        lines.append([row.label, *(_cell(r, row) for r in runs), _cell(medians, row), target, mark])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(line[1:-2], widths[1:-2], strict=True)]
        cells += [line[-2].ljust(widths[-2]), line[-1]]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out), all_met
