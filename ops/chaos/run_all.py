"""`make chaos`: every fault-injection scenario in ops/chaos, one after the other, each in a
process of its own, then one line per scenario and an exit code (0 when every scenario passed
or was skipped).

A scenario is any module in this folder that defines `main(argv) -> int` (exit 0 pass, 1 fail,
2 could not run, 3 skipped), apart from the shared ones in NOT_SCENARIOS. ORDER fixes the place
of the listed ones; any other scenario (fuzz, overload, ...) runs after them in name order, so
a new scenario needs no change here. Flags other than --only/--skip/--list go to every
scenario; a scenario ignores, with a note, the flags meant for others.

    make chaos
    make chaos CHAOS_ARGS="--only crash --kills 5 --workers 1"
    python ops/chaos/run_all.py --list
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# Crashes, the outage and the failover first; other scenario modules follow by name.
ORDER = ("crash", "outage", "failover")
NOT_SCENARIOS = {"__init__", "common", "run_all"}
RESULTS = {0: "PASS", 1: "FAIL", 2: "COULD NOT RUN", 3: "SKIPPED", 130: "INTERRUPTED"}


def scenarios() -> list[str]:
    found = []
    for path in HERE.glob("*.py"):
        name = path.stem
        if name in NOT_SCENARIOS or name.startswith("_"):
            continue
        if re.search(r"^def main\(", path.read_text(encoding="utf-8"), re.MULTILINE):
            found.append(name)
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_all", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="comma-separated scenarios to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated scenarios not to run")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args, rest = parser.parse_known_args(argv)
    available = scenarios()
    if args.list:
        print("\n".join(available))
        return 0
    chosen = args.only.split(",") if args.only else available
    unknown = [n for n in chosen if n not in available]
    if unknown:
        print(f"run_all: no such scenario: {', '.join(unknown)} (have: {', '.join(available)})")
        return 2
    skip = set(filter(None, args.skip.split(",")))
    chosen = [n for n in chosen if n not in skip]

    results: list[tuple[str, int, float]] = []
    started = time.monotonic()
    for name in chosen:
        print(f"\n######## chaos scenario: {name} {' '.join(rest)}".rstrip(), flush=True)
        t = time.monotonic()
        code = run(name, rest)
        results.append((name, code, time.monotonic() - t))
        if code == 130:
            break

    print(f"\n######## chaos: {len(results)} scenario(s) in {time.monotonic() - started:.0f} s")
    for name, code, seconds in results:
        result = RESULTS.get(code, f"ERROR (exit {code})")
        print(f"  {name:<12} {result:<14} {seconds:6.0f} s")
    failed = [name for name, code, _ in results if code not in (0, 3)]
    return 1 if failed or len(results) < len(chosen) else 0


def run(name: str, argv: list[str]) -> int:
    proc = subprocess.Popen([sys.executable, str(HERE / f"{name}.py"), *argv], cwd=ROOT)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the scenario too; a SIGTERM to run_all alone did not. Either way, let
        # the scenario stop the servers it started before it goes.
        for stop in (None, signal.SIGTERM, signal.SIGKILL):
            if stop is not None:
                proc.send_signal(stop)
            try:
                proc.wait(timeout=5 if stop is None else 60)
                break
            except subprocess.TimeoutExpired:
                continue
        return 130


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind like Ctrl-C
    sys.exit(main())
