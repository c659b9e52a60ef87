"""`bench.py --profile`: py-spy attached to each worker for a measurement's window, its collapsed
stacks (`--format raw`) saved in the run's log folder, and the functions that took the most
samples, by self time (the frame on top) and by total time (anywhere in the stack), aggregated
over the workers.

py-spy is not a dependency of the project: `.venv/bin/pip install py-spy` when wanted. It needs
ptrace rights on the workers (same user; in a container, the SYS_PTRACE capability or
kernel.yama.ptrace_scope 0 or 1 with the bench as their ancestor). `--nonblocking` reads the
workers' memory without stopping them, so the profile costs them less time (its stacks may
now and then be torn: a few samples off).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RATE = 100  # samples per second per worker
TOP = 25
INSTALL = ".venv/bin/pip install py-spy"
_LINE = re.compile(r":[0-9]+\)$")  # "func (path.py:123)" -> "func (path.py)"


def py_spy() -> str | None:
    """The py-spy binary: $PY_SPY, then PATH, then the venv's bin folder."""
    given = os.environ.get("PY_SPY")
    if given:
        return given if Path(given).is_file() else None
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else None


async def record(
    binary: str, pids: Iterable[int], delay: float, seconds: float, folder: Path, label: str
) -> tuple[list[Path], list[str]]:
    """py-spy on each pid for `seconds` after `delay`; the stacks' files and any failure."""
    await asyncio.sleep(delay)
    duration = max(1, round(seconds))  # py-spy --duration takes whole seconds
    runs = []
    for pid in pids:
        out = folder / f"{label}-{pid}.txt"
        args = [binary, "record", "--pid", str(pid), "--duration", str(duration)]
        args += ["--rate", str(RATE), "--format", "raw", "--output", str(out), "--nonblocking"]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        runs.append((pid, out, proc))
    files, failures = [], []
    for pid, out, proc in runs:
        text, _ = await proc.communicate()
        if proc.returncode == 0 and out.is_file():
            files.append(out)
        else:
            last = text.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            failures.append(f"py-spy on pid {pid} exited {proc.returncode}: {last[0]}")
    return files, failures


def stacks(path: Path) -> Counter[tuple[str, ...]]:
    """The collapsed stacks of one file: each stack (outermost frame first) and its samples."""
    found: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(_LINE.sub(")", f.strip()) for f in stack.split(";") if f.strip())
        found[frames] += int(count)
    return found


@dataclass
class Profile:
    samples: int
    self_time: Counter[str]
    total_time: Counter[str]


def aggregate(paths: Iterable[Path]) -> Profile:
    """Samples by function over every file: on top of the stack (self), and anywhere in it
    (total; a recursive function counts once per sample)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for path in paths:
        for frames, n in stacks(path).items():
            samples += n
            if frames:
                own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    return Profile(samples, own, total)


def text(label: str, paths: list[Path], top: int = TOP) -> list[str]:
    """The top functions by self and by total time, as lines of text."""
    p = aggregate(paths)
    lines = [
        f"profile of {label}: {p.samples:,} samples from {len(paths)} worker(s); a function's"
        " self time includes the C code it calls (the frame that runs the event loop holds"
        " uvloop's own time)"
    ]
    if not p.samples:
        return lines
    for title, counts in (("self", p.self_time), ("total", p.total_time)):
        lines.append(f"  top {top} by {title} time:")
        for name, n in counts.most_common(top):
            lines.append(f"    {100 * n / p.samples:5.1f} %  {name}")
    return lines
