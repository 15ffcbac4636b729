"""Profile a running process with py-spy while a block runs (``--profile``).

Writes ``<name>.folded.txt`` (collapsed stacks, one per line with its sample count: load it
in speedscope or flamegraph.pl to get the flame graph) and ``<name>.top.txt`` (the functions
with the most samples, inclusive and self), next to each other in ``benchmarks/profiles/``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

PROFILES = Path(__file__).with_name("profiles")


def py_spy() -> str | None:
    return shutil.which("py-spy") or (str(p) if (p := Path(sys.executable).with_name("py-spy")).exists() else None)


@contextlib.contextmanager
def profiling(pid: int, name: str, directory: Path | None, rate: int = 100) -> Iterator[None]:
    """Record ``pid`` for the duration of the block (nothing when ``directory`` is None)."""
    exe = py_spy()
    if directory is None or exe is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    folded = directory / f"{name}.folded.txt"
    proc = subprocess.Popen(
        [exe, "record", "--nonblocking", "-r", str(rate), "-f", "raw", "-o", str(folded), "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if folded.exists():
            (directory / f"{name}.top.txt").write_text(summarize(folded))


def _frame(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split('/')[-1]}" if where else name


def summarize(folded: Path, rows: int = 45) -> str:
    """The most sampled functions: inclusive (anywhere on the stack) and self (on top)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples", "", "inclusive:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(rows)]
    out += ["", "self:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(rows)]
    return "\n".join(out) + "\n"
