"""Fault injection for the postback ledger: `make chaos` runs every scenario here.

Each scenario is a module with `main(argv) -> int` that can also be run on its own
(`python ops/chaos/crash.py --help`); `common.py` holds what they share. The test suite imports
the scenarios as `ops.chaos.<name>` and runs short versions of them.
"""
